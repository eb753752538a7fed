#!/usr/bin/env python3
"""Clients of ecelerity's HTTP_Listener for the e2e tests (tests/tests/e2e/http.rs).

  http_check.py metrics --port P
      GET /metrics and /api/v1/status with `requests`; parse the metrics
      with prometheus_client's parser; print one JSON object with what the
      test compares against the console: per-family sample values keyed
      "name{label=value,...}", family types, and the status document.

  http_check.py page --port P --smtp-port S --shards N --domain D --count M
      Open the status page in headless Chromium (Playwright driving the
      Debian /usr/bin/chromium), wait for N shard rows and a queue row for D,
      then send M messages to D with smtplib and wait until the page's
      "Received messages" grows by M. Prints a JSON report; exits 1 with
      the reason on the first failed check, or if the page logged any
      console error or uncaught exception.
"""

import argparse
import json
import os
import smtplib
import sys
import time

import requests


def fail(reason, **extra):
    print(json.dumps({"ok": False, "reason": reason, **extra}))
    sys.exit(1)


def metrics(args):
    base = f"http://127.0.0.1:{args.port}"
    response = requests.get(f"{base}/metrics", timeout=30)
    if response.status_code != 200:
        fail(f"/metrics answered {response.status_code}", body=response.text[:500])
    content_type = response.headers.get("content-type", "")
    from prometheus_client.parser import text_string_to_metric_families

    samples = {}
    types = {}
    for family in text_string_to_metric_families(response.text):
        if family.name in types:
            fail(f"metric family {family.name} appears twice")
        types[family.name] = family.type
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    status = requests.get(f"{base}/api/v1/status", timeout=30)
    if status.status_code != 200:
        fail(f"/api/v1/status answered {status.status_code}", body=status.text[:500])
    print(json.dumps({
        "ok": True,
        "content_type": content_type,
        "types": types,
        "samples": samples,
        "status": status.json(),
        "status_content_type": status.headers.get("content-type", ""),
    }))


def send(port, domain, count, prefix):
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
        for i in range(count):
            body = (f"From: page@send.test\r\nTo: rcpt@{domain}\r\n"
                    f"Subject: {prefix} {i}\r\n\r\nmessage {i} for the status page\r\n")
            smtp.sendmail("page@send.test", [f"rcpt@{domain}"], body)


def page(args):
    from playwright.sync_api import sync_playwright

    problems = []
    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            pg = browser.new_page()
            pg.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                  if m.type == "error" else None)
            pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            pg.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            response = pg.goto(f"http://127.0.0.1:{args.port}/", wait_until="load")
            if response is None or response.status != 200:
                fail("the page did not load", status=response and response.status)
            deadline = 60_000
            pg.wait_for_function(
                f"document.querySelectorAll('#shards tbody tr').length === {args.shards}",
                timeout=deadline)
            shards = pg.eval_on_selector_all(
                "#shards tbody tr", "rows => rows.map(r => r.cells[0].textContent)")
            pg.wait_for_function(
                "d => [...document.querySelectorAll('#queues tbody tr')]"
                ".some(r => r.cells[2].textContent === d && Number(r.cells[3].textContent)"
                " + Number(r.cells[4].textContent) > 0)",
                arg=args.domain, timeout=deadline)
            queue = pg.eval_on_selector_all(
                "#queues tbody tr",
                "(rows, d) => rows.filter(r => r.cells[2].textContent === d)"
                ".map(r => [...r.cells].map(c => c.textContent))[0]", args.domain)
            received_js = ("() => Number([...document.querySelectorAll('#totals tbody tr')]"
                           ".find(r => r.cells[0].textContent === 'Received messages')"
                           ".cells[1].textContent)")
            before = pg.evaluate(received_js)
            send(args.smtp_port, args.domain, args.count, "page")
            pg.wait_for_function(f"({received_js})() >= {before + args.count}",
                                 timeout=deadline)
            after = pg.evaluate(received_js)
            plots = pg.eval_on_selector_all("#accept canvas", "c => c.length")
            state = pg.text_content("#state")
            if plots != args.shards:
                fail(f"{plots} accept-latency plots for {args.shards} shards")
            if not state.startswith("live"):
                fail(f"page state is {state!r}")
        finally:
            browser.close()
    if problems:
        fail("the page reported errors", problems=problems)
    print(json.dumps({"ok": True, "shards": shards, "queue": queue,
                      "received_before": before, "received_after": after}))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("metrics")
    m.add_argument("--port", type=int, required=True)
    pg = sub.add_parser("page")
    pg.add_argument("--port", type=int, required=True)
    pg.add_argument("--smtp-port", type=int, required=True)
    pg.add_argument("--shards", type=int, required=True)
    pg.add_argument("--domain", required=True)
    pg.add_argument("--count", type=int, default=5)
    args = parser.parse_args()
    {"metrics": metrics, "page": page}[args.command](args)


if __name__ == "__main__":
    main()
