#!/usr/bin/env python3
"""Webhook receiver for the ecelerity end-to-end tests (Python's http.server).

Listens on 127.0.0.1:PORT. Every POST must carry a JSON array; each element
is appended to DIR/received.jsonl as one line
  {"post": N, "path": "/...", "token": <X-MessageSystems-Webhook-Token or null>,
   "content_type": "...", "event": <the element>}
and only once the whole batch is written (and flushed) is it answered 200.
A body that is not a JSON array is answered 400 and recorded nowhere.
With --fail-first N the first N POSTs are answered 503 and recorded nowhere
(their count goes to DIR/refused.txt).
POST numbers continue after a restart (counted from the file).
SIGTERM stops it, after the answer of a batch being handled.
"""

import argparse
import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

# Largest body accepted; the daemon's batches are far smaller.
BODY_BYTES_MAX = 64 * 1024 * 1024


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        # A SIGTERM while a batch is handled waits for its answer: a batch
        # recorded but never answered would be posted again, and counted
        # twice, by a sender that did nothing wrong.
        self.server.busy = True
        try:
            self.handle_batch()
        finally:
            self.server.busy = False
            if self.server.exit_requested:
                sys.exit(0)

    def handle_batch(self):
        length = int(self.headers.get("Content-Length", "0"))
        if length > BODY_BYTES_MAX:
            return self.answer(413)
        body = self.rfile.read(length)
        try:
            batch = json.loads(body)
        except ValueError:
            return self.answer(400)
        if not isinstance(batch, list):
            return self.answer(400)
        server = self.server
        if server.refused < server.fail_first:
            server.refused += 1
            with open(os.path.join(server.dir, "refused.txt"), "w") as f:
                f.write(f"{server.refused}\n")
            return self.answer(503)
        server.posts += 1
        with open(server.path, "a") as f:
            for event in batch:
                record = {
                    "post": server.posts,
                    "path": self.path,
                    "token": self.headers.get("X-MessageSystems-Webhook-Token"),
                    "content_type": self.headers.get("Content-Type"),
                    "event": event,
                }
                f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.answer(200)

    def answer(self, code):
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()

    def log_message(self, fmt, *args):
        sys.stderr.write("webhook_receiver: " + (fmt % args) + "\n")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--fail-first", type=int, default=0)
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    server = HTTPServer(("127.0.0.1", args.port), Handler)
    server.path = os.path.join(args.dir, "received.jsonl")
    server.posts = 0
    server.dir = args.dir
    server.fail_first = args.fail_first
    server.refused = 0
    if os.path.exists(server.path):
        with open(server.path) as f:
            for line in f:
                server.posts = max(server.posts, json.loads(line)["post"])
    server.busy = False
    server.exit_requested = False

    def on_term(*_):
        if server.busy:
            server.exit_requested = True
        else:
            sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    with open(os.path.join(args.dir, "ready"), "w") as f:
        f.write(str(os.getpid()))
    server.serve_forever()


if __name__ == "__main__":
    main()
