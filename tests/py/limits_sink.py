#!/usr/bin/env python3
"""SMTP sink that watches connections, for the ecelerity limits tests (aiosmtpd).

Listens on HOST:PORT, accepts every transaction (after --data-delay-ms, so
that concurrent connections build up), stores nothing but events, one line
each, appended to DIR/events.txt as it happens:
  open    UNIX_TIME CONNECTION OPEN_NOW   a connection was accepted
  message UNIX_TIME CONNECTION            a DATA was accepted (250 sent)
  close   UNIX_TIME CONNECTION OPEN_NOW   a connection ended
  refuse  UNIX_TIME CONNECTION            a RCPT got --rcpt-reply (with
                                          --rcpt-reply only)
CONNECTION numbers connections from 1; OPEN_NOW counts open connections
after the event. DIR/ready appears once the socket listens (so the test
need not probe the port, which would count as a connection).
With --rcpt-reply "451 ..." every RCPT TO gets that reply instead of 250
(a receiver in a storm of 4xx).
"""

import argparse
import asyncio
import os
import signal
import sys
import time

from aiosmtpd.smtp import SMTP


class Events:
    def __init__(self, directory):
        os.makedirs(directory, exist_ok=True)
        self.file = open(os.path.join(directory, "events.txt"), "a", encoding="ascii")
        self.opened = 0
        self.open_now = 0

    def write(self, *fields):
        self.file.write(" ".join(str(f) for f in fields) + "\n")
        self.file.flush()


class Handler:
    def __init__(self, events, data_delay_s, rcpt_reply):
        self.events = events
        self.data_delay_s = data_delay_s
        self.rcpt_reply = rcpt_reply

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.rcpt_reply:
            self.events.write("refuse", f"{time.time():.6f}", server.connection_number)
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.data_delay_s > 0:
            await asyncio.sleep(self.data_delay_s)
        self.events.write("message", f"{time.time():.6f}", server.connection_number)
        return "250 2.0.0 Ok"


class CountingSMTP(SMTP):
    def __init__(self, handler, events, **kwargs):
        super().__init__(handler, **kwargs)
        self.events = events
        self.connection_number = 0

    def connection_made(self, transport):
        self.events.opened += 1
        self.events.open_now += 1
        self.connection_number = self.events.opened
        self.events.write(
            "open", f"{time.time():.6f}", self.connection_number, self.events.open_now
        )
        super().connection_made(transport)

    def connection_lost(self, error):
        self.events.open_now -= 1
        self.events.write(
            "close", f"{time.time():.6f}", self.connection_number, self.events.open_now
        )
        super().connection_lost(error)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--data-delay-ms", type=int, default=0)
    parser.add_argument("--rcpt-reply", default="")
    args = parser.parse_args()

    events = Events(args.dir)
    handler = Handler(events, args.data_delay_ms / 1000.0, args.rcpt_reply)

    def factory():
        return CountingSMTP(handler, events, hostname="limits-sink.test", decode_data=False)

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(
        loop.create_server(factory, host=args.host, port=args.port, reuse_address=True)
    )
    with open(os.path.join(args.dir, "ready"), "w", encoding="ascii") as ready:
        ready.write(f"{args.host}:{args.port}\n")
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.run_until_complete(stop.wait())
    server.close()
    loop.run_until_complete(server.wait_closed())
    loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
