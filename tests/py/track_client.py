#!/usr/bin/env python3
"""A mail client following tracking links, for the e2e tests
(tests/tests/e2e/engagement.rs), with Python `requests`.

  track_client.py --url URL [--method GET|HEAD] [--user-agent UA]
      One request, redirects not followed; prints
      {"status": N, "headers": {lower-case name: value}, "body": <base64>}.
"""

import argparse
import base64
import json

import requests


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--method", default="GET")
    p.add_argument("--user-agent", default="")
    args = p.parse_args()
    headers = {"Accept-Language": "en-GB,en;q=0.8"}
    if args.user_agent:
        headers["User-Agent"] = args.user_agent
    r = requests.request(
        args.method, args.url, headers=headers, allow_redirects=False, timeout=60
    )
    print(json.dumps({
        "status": r.status_code,
        "headers": {k.lower(): v for k, v in r.headers.items()},
        "body": base64.b64encode(r.content).decode(),
    }))


if __name__ == "__main__":
    main()
