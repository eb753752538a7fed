#!/usr/bin/env python3
"""An MTA-STS policy server for the tests: HTTPS (Python's http.server and
ssl) on --host:--port, serving GET /.well-known/mta-sts.txt for the host
`mta-sts.<domain>` named in the Host header from --dir/<domain>.txt.
Every request is appended to --dir/requests.log as "<host> <path> <status>"
so a test can count fetches. Prints "ready" once listening."""

import argparse
import http.server
import os
import ssl
import sys


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--dir", required=True)
    args = parser.parse_args()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            host = (self.headers.get("Host") or "").split(":")[0].lower()
            status, body = 404, b"not found\n"
            if self.path == "/.well-known/mta-sts.txt" and host.startswith("mta-sts."):
                path = os.path.join(args.dir, host[len("mta-sts."):] + ".txt")
                if os.path.isfile(path):
                    with open(path, "rb") as f:
                        status, body = 200, f.read()
            with open(os.path.join(args.dir, "requests.log"), "a") as log:
                log.write(f"{host} {self.path} {status}\n")
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer((args.host, args.port), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
