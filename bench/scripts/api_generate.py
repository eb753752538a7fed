#!/usr/bin/env python3
"""REST transmission generation bench: recipients/s from POST to the
spooled answer, and the daemon's CPU per generated message.

  cargo build --release --bin ecelerity --bin ec_console
  python3 bench/scripts/api_generate.py [--recipients 10000] [--runs 3] [--shards 2]
  python3 bench/scripts/api_generate.py --template --recipients 100000 --runs 3
  python3 bench/scripts/api_generate.py --kumo --recipients 100000 --runs 3

Starts target/release/ecelerity in a temporary directory with an
HTTP_Listener, makes an API key with ec_console, suspends delivery of the
one recipient domain (so only generation and spooling are measured), then
POSTs a transmission of N recipients (text + html, about 1 KiB each) per
run. CPU is the daemon's utime+stime from /proc around each POST.

--template: the content is a stored template (POST /api/v1/templates)
with substitution: a few variables per recipient, an if and an each
(TEMPLATE_TEXT / TEMPLATE_HTML below), rendered per recipient.

--kumo: the same transmission, with the same template in MiniJinja, to
KumoMTA's HTTP injection API (POST /api/inject/v1) instead; kumod from
../shared/peers (run-kumod-relay.sh: RocksDB spool, --kumo-flush picks
its flush mode), its one sink port closed so nothing is delivered.
"""

import argparse
import concurrent.futures
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


FILLER = "This line is here to give the message a realistic size. " * 6
# Ours (MOMENTUM.md 7.3) and KumoMTA's MiniJinja: the same output.
TEMPLATE_SUBJECT = "Hello {{name}}, your order {{order_id}}"
TEMPLATE_TEXT = ("Hi {{name}},\n{{if vip}}Thanks for being a VIP.\n{{else}}Welcome back.\n{{end}}"
                 "Your items:\n{{each items}}- {{loop_var}}\n{{end}}" + FILLER + "\n")
TEMPLATE_HTML = ("<html><body><p>Hi {{name}},</p>{{if vip}}<p>Thanks for being a VIP.</p>{{end}}"
                 "<ul>{{each items}}<li>{{loop_var}}</li>{{end}}</ul><p>" + FILLER + "</p></body></html>")
JINJA_SUBJECT = "Hello {{ name }}, your order {{ order_id }}"
JINJA_TEXT = ("Hi {{ name }},\n{% if vip %}Thanks for being a VIP.\n{% else %}Welcome back.\n{% endif %}"
              "Your items:\n{% for i in items %}- {{ i }}\n{% endfor %}" + FILLER + "\n")
JINJA_HTML = ("<html><body><p>Hi {{ name }},</p>{% if vip %}<p>Thanks for being a VIP.</p>{% endif %}"
              "<ul>{% for i in items %}<li>{{ i }}</li>{% endfor %}</ul><p>" + FILLER + "</p></body></html>")
ITEMS = ["alpha", "beta", "gamma"]


def rcpt_data(i):
    return {"name": f"User {i}", "order_id": i, "vip": i % 10 == 0}


def summarize(results, **extra):
    med = lambda k: sorted(r[k] for r in results)[len(results) // 2]
    print(json.dumps({"median_rcpts_per_s": med("rcpts_per_s"),
                      "median_cpu_us_per_msg": med("cpu_us_per_msg"), **extra}))


def kumo(args):
    """KumoMTA's HTTP injection of the same templated transmission."""
    peers = os.path.join(ROOT, "..", "shared", "peers")
    script = os.path.join(peers, "run-kumod-relay.sh")
    if not os.path.exists(script):
        sys.exit(f"no {script}: KumoMTA is not available on this machine")
    results = []
    for run in range(args.runs):
        d = tempfile.mkdtemp(prefix="ec-api-bench-kumo-")
        smtp, http = free_port(), free_port()
        env = dict(os.environ, KUMO_HTTP_LISTEN=f"127.0.0.1:{http}")
        # Its sink port is closed: messages stay queued (retry every 10 s).
        kumod = subprocess.Popen(["bash", script, os.path.join(d, "spool"), str(smtp), str(free_port()),
                                  "true" if args.kumo_flush else "false"],
                                 env=env, stdout=subprocess.DEVNULL,
                                 stderr=open(os.path.join(d, "stderr"), "w"))
        try:
            for _ in range(600):
                try:
                    if requests.get(f"http://127.0.0.1:{http}/api/check-liveness/v1", timeout=1).ok:
                        break
                except requests.RequestException:
                    pass
                time.sleep(0.1)
            else:
                sys.exit(f"kumod did not start; see {d}/stderr")
            batches = []
            for first in range(0, args.recipients, args.kumo_batch):
                last = min(first + args.kumo_batch, args.recipients)
                body = {
                    "envelope_sender": "bench@bench.test",
                    "content": {"from": {"email": "bench@bench.test", "name": "Bench"},
                                "subject": JINJA_SUBJECT, "text_body": JINJA_TEXT, "html_body": JINJA_HTML},
                    "substitutions": {"items": ITEMS},
                    "recipients": [{"email": f"u{run}-{i}@bench.example", "substitutions": rcpt_data(i)}
                                   for i in range(first, last)],
                }
                batches.append(json.dumps(body).encode())

            def post(data):
                r = requests.post(f"http://127.0.0.1:{http}/api/inject/v1", data=data,
                                  headers={"Content-Type": "application/json"}, timeout=1200)
                assert r.status_code == 200, r.text[:500]
                return r.json()["success_count"]

            pid = kumod.pid  # the script execs kumod
            before = cpu_secs(pid)
            started = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(args.kumo_concurrency) as pool:
                n = sum(pool.map(post, batches))
            wall = time.monotonic() - started
            cpu = cpu_secs(pid) - before
            assert n == args.recipients, n
            data = b"".join(batches)
            row = {"peer": "kumod", "recipients": n, "seconds": round(wall, 3),
                   "rcpts_per_s": round(n / wall), "cpu_us_per_msg": round(cpu * 1e6 / n, 1),
                   "request_bytes": len(data), "requests": len(batches), "flush": args.kumo_flush}
            results.append(row)
            print(json.dumps(row), flush=True)
        finally:
            kumod.terminate()
            try:
                kumod.wait(timeout=60)
            except subprocess.TimeoutExpired:
                kumod.kill()
    summarize(results, peer="kumod")


def console(sock, command):
    out = subprocess.run([os.path.join(BIN, "ec_console"), sock, *command.split()],
                         capture_output=True, text=True, timeout=30)
    return out.stdout


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--recipients", type=int, default=10000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--template", action="store_true",
                   help="a stored template with substitution, rendered per recipient")
    p.add_argument("--kumo", action="store_true", help="KumoMTA's /api/inject/v1 instead")
    p.add_argument("--kumo-flush", action="store_true", help="kumod with flush=true")
    p.add_argument("--kumo-batch", type=int, default=10000,
                   help="recipients per injection request (kumod refuses bodies over its 2 MiB-class limit)")
    p.add_argument("--kumo-concurrency", type=int, default=2, help="injection requests in flight")
    args = p.parse_args()
    if args.kumo:
        return kumo(args)
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
        key = console(sock, "api_key create bench").strip().splitlines()[-1]
        if args.template:
            r = requests.post(f"http://127.0.0.1:{http}/api/v1/templates",
                              json={"id": "bench", "name": "bench", "published": True,
                                    "content": {"from": {"email": "bench@bench.test", "name": "Bench"},
                                                "subject": TEMPLATE_SUBJECT,
                                                "text": TEMPLATE_TEXT, "html": TEMPLATE_HTML}},
                              headers={"Authorization": key}, timeout=60)
            assert r.status_code == 200, r.text
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
            if args.template:
                body["content"] = {"template_id": "bench"}
                body["substitution_data"] = {"items": ITEMS}
                for i, r in enumerate(body["recipients"]):
                    r["substitution_data"] = rcpt_data(i)
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
        summarize(results, shards=args.shards, template=args.template)
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()


if __name__ == "__main__":
    main()
