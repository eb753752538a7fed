#!/usr/bin/env python3
"""A REST API client for the e2e tests (tests/tests/e2e/api.rs), with
Python `requests`, and a MIME reader with Python's `email` package.

  api_client.py request --port P [--key K] --method M --path PATH [--body FILE]
      One request; prints {"status": N, "body": <JSON or text>, "seconds": S}.

  api_client.py parse FILE...
      Parses each stored message (a sink file) with email.message_from_bytes
      (policy=email.policy.default) and prints one JSON list: per message
      its headers (name, value, in order), its content type tree, and every
      leaf part: content type, disposition, filename, Content-ID, and its
      decoded payload as base64.
"""

import argparse
import base64
import email
import email.policy
import json
import sys
import time

import requests


def request(args):
    headers = {"Content-Type": "application/json"}
    if args.key is not None:
        headers["Authorization"] = args.key
    data = None
    if args.body:
        with open(args.body, "rb") as f:
            data = f.read()
    started = time.monotonic()
    response = requests.request(
        args.method,
        f"http://127.0.0.1:{args.port}{args.path}",
        headers=headers,
        data=data,
        timeout=300,
    )
    seconds = time.monotonic() - started
    try:
        body = response.json()
    except ValueError:
        body = response.text
    print(json.dumps({"status": response.status_code, "body": body, "seconds": seconds}))


def tree(part):
    if part.is_multipart():
        return {part.get_content_type(): [tree(p) for p in part.iter_parts()]}
    return part.get_content_type()


def parse(args):
    out = []
    for path in args.files:
        with open(path, "rb") as f:
            raw = f.read()
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        leaves = []
        for part in msg.walk():
            if part.is_multipart():
                continue
            payload = part.get_payload(decode=True) or b""
            leaves.append({
                "type": part.get_content_type(),
                "disposition": part.get_content_disposition(),
                "filename": part.get_filename(),
                "content_id": part.get("Content-ID"),
                "data": base64.b64encode(payload).decode(),
            })
        out.append({
            "headers": [[k, str(v)] for k, v in msg.items()],
            "defects": [str(d) for d in msg.defects],
            "tree": tree(msg),
            "leaves": leaves,
        })
    print(json.dumps(out))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("request")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--key")
    r.add_argument("--method", default="GET")
    r.add_argument("--path", required=True)
    r.add_argument("--body")
    r.set_defaults(fn=request)
    m = sub.add_parser("parse")
    m.add_argument("files", nargs="+")
    m.set_defaults(fn=parse)
    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
