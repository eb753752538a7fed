#!/usr/bin/env python3
"""A scripted, odd SMTP server for the ecelerity end-to-end tests.

Plain asyncio, no SMTP library, so it can misbehave exactly as told:
  --greeting LINE        answer every connection with LINE (e.g. "554 5.7.1
                         go away") instead of 220, then take only QUIT;
  --final-reply-bytes N  answer the final dot with a 250 line of N bytes;
  --no-8bitmime          leave 8BITMIME out of the EHLO reply (only
                         PIPELINING and ENHANCEDSTATUSCODES are offered);
  --silent               never greet: read and drop whatever comes.

DIR/ready appears once it listens. Counts go to DIR/counts.txt, rewritten after every event, one "name value"
a line: connections, quits, mail_from_8bitmime (MAIL FROM with
BODY=8BITMIME), messages. Each accepted message (DATA content,
dot-unstuffed, CRLF line ends) goes to DIR/NNNNNNNN.eml.
"""

import argparse
import asyncio
import os
import signal
import sys

# Longest line read from the client; a longer one ends the connection.
LINE_BYTES_MAX = 1024 * 1024
# Seconds a connection may stay silent before it is dropped.
IDLE_SECONDS = 60


class State:
    def __init__(self, directory):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self.counts = {"connections": 0, "quits": 0, "mail_from_8bitmime": 0, "messages": 0}
        self.write_counts()

    def bump(self, name):
        self.counts[name] += 1
        self.write_counts()

    def write_counts(self):
        path = os.path.join(self.directory, "counts.txt")
        with open(path + ".tmp", "w") as f:
            for name, value in self.counts.items():
                f.write(f"{name} {value}\n")
        os.replace(path + ".tmp", path)

    def save(self, content):
        name = f"{self.counts['messages'] + 1:08d}.eml"
        with open(os.path.join(self.directory, name), "wb") as f:
            f.write(content)
        self.bump("messages")


async def read_line(reader):
    line = await asyncio.wait_for(reader.readuntil(b"\n"), IDLE_SECONDS)
    if len(line) > LINE_BYTES_MAX:
        raise ValueError("line too long")
    return line


async def session(args, state, reader, writer):
    state.bump("connections")

    def send(text):
        writer.write(text.encode() + b"\r\n")

    try:
        if args.silent:
            while await reader.read(4096):
                pass
            return
        if args.greeting:
            send(args.greeting)
            await writer.drain()
            while True:
                line = await read_line(reader)
                if line.strip().upper() == b"QUIT":
                    state.bump("quits")
                    send("221 2.0.0 bye")
                    await writer.drain()
                    return
                send("503 5.5.1 refused at the greeting")
                await writer.drain()
        send("220 odd.test ESMTP")
        await writer.drain()
        in_transaction = False
        while True:
            line = await read_line(reader)
            verb = line.strip().split(b" ", 1)[0].upper()
            if verb in (b"EHLO", b"HELO"):
                keywords = ["PIPELINING", "ENHANCEDSTATUSCODES"]
                if not args.no_8bitmime:
                    keywords.append("8BITMIME")
                lines = ["odd.test"] + keywords
                for keyword in lines[:-1]:
                    writer.write(f"250-{keyword}\r\n".encode())
                send(f"250 {lines[-1]}")
            elif verb == b"MAIL":
                if b"BODY=8BITMIME" in line.upper():
                    state.bump("mail_from_8bitmime")
                in_transaction = True
                send("250 2.1.0 ok")
            elif verb == b"RCPT":
                send("250 2.1.5 ok" if in_transaction else "503 5.5.1 no MAIL")
            elif verb == b"DATA":
                send("354 go ahead")
                await writer.drain()
                content = bytearray()
                while True:
                    data_line = await read_line(reader)
                    if data_line == b".\r\n":
                        break
                    if data_line.startswith(b"."):
                        data_line = data_line[1:]
                    content += data_line
                state.save(bytes(content))
                in_transaction = False
                if args.final_reply_bytes:
                    text = "250 2.0.0 queued "
                    send(text + "x" * max(0, args.final_reply_bytes - len(text)))
                else:
                    send("250 2.0.0 queued")
            elif verb == b"RSET":
                in_transaction = False
                send("250 2.0.0 ok")
            elif verb == b"NOOP":
                send("250 2.0.0 ok")
            elif verb == b"QUIT":
                state.bump("quits")
                send("221 2.0.0 bye")
                await writer.drain()
                return
            else:
                send("502 5.5.2 unknown command")
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--greeting")
    parser.add_argument("--final-reply-bytes", type=int, default=0)
    parser.add_argument("--no-8bitmime", action="store_true")
    parser.add_argument("--silent", action="store_true")
    args = parser.parse_args()
    state = State(args.dir)

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(
        asyncio.start_server(
            lambda r, w: session(args, state, r, w),
            host=args.host,
            port=args.port,
            reuse_address=True,
            limit=LINE_BYTES_MAX + 1,
        )
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # Listening: tell the test (it must not probe, which would count).
    with open(os.path.join(args.dir, "ready"), "w") as f:
        f.write("ready\n")
    print(f"odd server on {args.host}:{args.port}, storing in {args.dir}", flush=True)
    loop.run_until_complete(stop.wait())
    server.close()
    loop.run_until_complete(server.wait_closed())
    loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
