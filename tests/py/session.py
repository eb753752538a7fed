#!/usr/bin/env python3
"""A scripted SMTP session with smtplib: the scriptlet test kit.

Reads steps from stdin, one a line, and prints one line per step:
`<step> <code> <text>` (multi-line replies joined with ` | `), or
`<step> disconnected` once the server has closed.

    connect [SOURCE_IP]     open the session (from SOURCE_IP, e.g. 127.0.0.9)
    ehlo NAME
    mail ADDRESS            MAIL FROM:<ADDRESS> (empty for <>)
    rcpt ADDRESS
    data TEXT               the message; `\\r\\n` and `\\n` in TEXT are line ends
    rset | noop | quit

Usage: session.py --port PORT < steps
"""
import argparse
import smtplib
import sys


def text_of(msg):
    if isinstance(msg, bytes):
        msg = msg.decode("utf-8", "replace")
    return msg.replace("\n", " | ")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    smtp = None
    closed = False
    for line in sys.stdin:
        line = line.rstrip("\n")
        if not line.strip():
            continue
        step, _, rest = line.partition(" ")
        if closed:
            print(f"{step} disconnected", flush=True)
            continue
        try:
            if step == "connect":
                source = (rest, 0) if rest else None
                smtp = smtplib.SMTP(timeout=args.timeout, source_address=source)
                code, msg = smtp.connect(args.host, args.port)
            elif step == "ehlo":
                code, msg = smtp.ehlo(rest)
            elif step == "mail":
                code, msg = smtp.mail(rest)
            elif step == "rcpt":
                code, msg = smtp.rcpt(rest)
            elif step == "data":
                body = rest.replace("\\r\\n", "\r\n").replace("\\n", "\r\n")
                try:
                    code, msg = smtp.data(body.encode())
                except smtplib.SMTPDataError as e:
                    code, msg = e.smtp_code, e.smtp_error
            elif step in ("rset", "noop", "quit"):
                code, msg = smtp.docmd(step.upper())
            else:
                print(f"{step} unknown step", flush=True)
                continue
            print(f"{step} {code} {text_of(msg)}", flush=True)
            if code == 421 or step == "quit":
                closed = True
        except (smtplib.SMTPServerDisconnected, ConnectionError, OSError) as e:
            print(f"{step} disconnected", flush=True)
            closed = True


if __name__ == "__main__":
    main()
