#!/usr/bin/env python3
"""REST transmission generation bench: recipients/s from POST to the
spooled answer, and the daemon's CPU per generated message.

  cargo build --release --bin ecelerity --bin ec_console
  python3 bench/scripts/api_generate.py [--recipients 10000] [--runs 3] [--shards 2]

Starts target/release/ecelerity in a temporary directory with an
HTTP_Listener, makes an API key with ec_console, suspends delivery of the
one recipient domain (so only generation and spooling are measured), then
POSTs a transmission of N recipients (text + html, about 1 KiB each) per
run. CPU is the daemon's utime+stime from /proc around each POST.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "target", "release")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cpu_secs(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def console(sock, command):
    out = subprocess.run([os.path.join(BIN, "ec_console"), sock, *command.split()],
                         capture_output=True, text=True, timeout=30)
    return out.stdout


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--recipients", type=int, default=10000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--shards", type=int, default=2)
    args = p.parse_args()
    d = tempfile.mkdtemp(prefix="ec-api-bench-")
    http, smtp = free_port(), free_port()
    sock = os.path.join(d, "ec.sock")
    conf = os.path.join(d, "ecelerity.conf")
    with open(conf, "w") as f:
        f.write(f'''spoolbase = "{d}/spool"
pidfile = "{d}/ecelerity.pid"
hostname = "bench.test"
shards = {args.shards}
gateway = "127.0.0.1:{free_port()}"
ESMTP_Listener {{ Listen "127.0.0.1:{smtp}" {{ }} }}
HTTP_Listener {{ Listen "127.0.0.1:{http}" {{ }} }}
Control_Listener {{ Listen "{sock}" {{ File_Mode = 0600 }} }}
ec_logger "ec_logger" {{ mainlog = "{d}/mainlog.ec" rejectlog = "{d}/rejectlog.ec" paniclog = "{d}/paniclog.ec" }}
''')
    daemon = subprocess.Popen([os.path.join(BIN, "ecelerity"), "--config", conf],
                              stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "stderr"), "w"))
    try:
        for _ in range(300):
            if os.path.exists(sock) and "Summary" in console(sock, "summary"):
                break
            time.sleep(0.1)
        else:
            sys.exit(f"daemon did not start; see {d}/stderr")
        print(console(sock, "suspend domain bench.example").strip())
        key = console(sock, "api_key create bench transmissions:modify").strip().splitlines()[-1]
        html = "<html><body><p>" + "Hello from the bench. " * 20 + "</p></body></html>"
        text = "Hello from the bench. " * 20 + "\n"
        results = []
        for run in range(args.runs):
            body = {
                "campaign_id": f"bench-{run}",
                "metadata": {"run": run},
                "recipients": [{"address": f"u{run}-{i}@bench.example", "tags": ["b"]}
                               for i in range(args.recipients)],
                "content": {"from": "bench@bench.test", "subject": "bench", "text": text, "html": html},
            }
            data = json.dumps(body).encode()
            before = cpu_secs(daemon.pid)
            started = time.monotonic()
            r = requests.post(f"http://127.0.0.1:{http}/api/v1/transmissions", data=data,
                              headers={"Authorization": key, "Content-Type": "application/json"},
                              timeout=600)
            wall = time.monotonic() - started
            cpu = cpu_secs(daemon.pid) - before
            assert r.status_code == 200, r.text
            n = r.json()["results"]["total_accepted_recipients"]
            assert n == args.recipients, r.text
            row = {"recipients": n, "seconds": round(wall, 3), "rcpts_per_s": round(n / wall),
                   "cpu_us_per_msg": round(cpu * 1e6 / n, 1), "request_bytes": len(data)}
            results.append(row)
            print(json.dumps(row))
        print(json.dumps({"median_rcpts_per_s": sorted(r["rcpts_per_s"] for r in results)[len(results) // 2],
                          "median_cpu_us_per_msg": sorted(r["cpu_us_per_msg"] for r in results)[len(results) // 2],
                          "shards": args.shards}))
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()


if __name__ == "__main__":
    main()
