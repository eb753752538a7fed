#!/usr/bin/env python3
"""SMTP client for the ecelerity end-to-end tests (smtplib).

Two modes. With --file FILE it sends the exact bytes of FILE (which must use
CRLF line endings) as one message and prints "FILE<TAB>CODE". Otherwise it
generates messages with unique Message-IDs "<PREFIX-THREAD-SEQ@send.test>" of
--min-size..--max-size bytes and sends them over --threads connections,
printing one line "MSGID<TAB>CODE" per attempt, where CODE is the final reply
code of the transaction (the DATA reply when it got that far) or ERR when the
connection failed before a reply (the message may or may not have been taken).

--count N is the total number of attempts, split over the threads. With
--until-accepted it is instead the total number of 250 replies wanted: a
thread keeps making new messages until it has its share, reconnecting after
every failure, until --deadline seconds have passed. Exit status: 0 when
every wanted message got 250, 1 otherwise, 2 on bad usage.
"""

import argparse
import random
import smtplib
import socket
import sys
import threading
import time

# How long a single SMTP command may take before the attempt counts as failed.
COMMAND_TIMEOUT_S = 60
# Pause between reconnection attempts while the server is down.
RECONNECT_PAUSE_S = 0.05
# Body lines are this long (plus CRLF); well under the 998-octet limit.
BODY_LINE_BYTES = 76

print_lock = threading.Lock()


def emit(message_id, code):
    with print_lock:
        sys.stdout.write(f"{message_id}\t{code}\n")
        sys.stdout.flush()


def make_message(message_id, mail_from, rcpts, size, rng):
    headers = (
        f"From: <{mail_from}>\r\n"
        f"To: {', '.join('<' + r + '>' for r in rcpts)}\r\n"
        f"Subject: e2e {message_id}\r\n"
        f"Message-ID: {message_id}\r\n"
        f"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
        f"\r\n"
    ).encode()
    lines = [headers]
    length = len(headers)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .-"
    while length < size:
        want = min(BODY_LINE_BYTES, max(1, size - length - 2))
        line = "".join(rng.choice(alphabet) for _ in range(want))
        if rng.random() < 0.05:
            line = "." + line[1:]
        encoded = line.encode() + b"\r\n"
        lines.append(encoded)
        length += len(encoded)
    return b"".join(lines)


def code_of(error):
    code = getattr(error, "smtp_code", None)
    if code is None and isinstance(error, smtplib.SMTPRecipientsRefused):
        codes = [c for c, _ in error.recipients.values()]
        code = codes[0] if codes else None
    return code


class Connection:
    def __init__(self, host, port, helo):
        self.host = host
        self.port = port
        self.helo = helo
        self.smtp = None

    def ensure(self, deadline):
        while self.smtp is None:
            try:
                smtp = smtplib.SMTP(self.host, self.port, local_hostname=self.helo,
                                    timeout=COMMAND_TIMEOUT_S)
                smtp.ehlo()
                self.smtp = smtp
            except (OSError, smtplib.SMTPException):
                if time.monotonic() >= deadline:
                    return False
                time.sleep(RECONNECT_PAUSE_S)
        return True

    def drop(self):
        if self.smtp is not None:
            try:
                self.smtp.close()
            except OSError:
                pass
        self.smtp = None

    def send(self, mail_from, rcpts, data):
        """One transaction; returns the final code or "ERR"."""
        smtp = self.smtp
        try:
            code, _ = smtp.mail(mail_from)
            if code != 250:
                smtp.rset()
                return code
            accepted = 0
            last_refusal = None
            for rcpt in rcpts:
                code, _ = smtp.rcpt(rcpt)
                if code in (250, 251):
                    accepted += 1
                else:
                    last_refusal = code
            if accepted == 0:
                smtp.rset()
                return last_refusal
            code, _ = smtp.data(data)
            return code
        except smtplib.SMTPResponseException as error:
            # A reply the session cannot continue after (421 and friends).
            self.drop()
            return error.smtp_code
        except (OSError, smtplib.SMTPException):
            self.drop()
            return "ERR"

    def quit(self):
        if self.smtp is not None:
            try:
                self.smtp.quit()
            except (OSError, smtplib.SMTPException):
                pass
        self.drop()


def worker(args, thread_index, quota, results):
    rng = random.Random(args.seed * 1000 + thread_index)
    rcpts = args.to.split(",")
    connection = Connection(args.host, args.port, args.helo)
    deadline = time.monotonic() + args.deadline
    accepted = 0
    attempts = 0
    while time.monotonic() < deadline:
        if args.until_accepted and accepted >= quota:
            break
        if not args.until_accepted and attempts >= quota:
            break
        if not connection.ensure(deadline):
            break
        attempts += 1
        message_id = f"<{args.prefix}-{thread_index}-{attempts}@send.test>"
        size = rng.randint(args.min_size, args.max_size)
        data = make_message(message_id, args.mail_from, rcpts, size, rng)
        code = connection.send(args.mail_from, rcpts, data)
        emit(message_id, code)
        if code == 250:
            accepted += 1
    connection.quit()
    results[thread_index] = (accepted, attempts)


def send_file(args):
    with open(args.file, "rb") as source:
        data = source.read()
    connection = Connection(args.host, args.port, args.helo)
    if not connection.ensure(time.monotonic() + args.deadline):
        emit(args.file, "ERR")
        return 1
    code = connection.send(args.mail_from, args.to.split(","), data)
    connection.quit()
    emit(args.file, code)
    return 0 if code == 250 else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--helo", default="client.test")
    parser.add_argument("--from", dest="mail_from", default="sender@send.test")
    parser.add_argument("--to", default="rcpt@example.com",
                        help="comma-separated recipients")
    parser.add_argument("--file")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-size", type=int, default=1024)
    parser.add_argument("--max-size", type=int, default=4096)
    parser.add_argument("--prefix", default="e2e")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--until-accepted", action="store_true")
    parser.add_argument("--deadline", type=float, default=300.0,
                        help="seconds after which the threads stop")
    args = parser.parse_args()
    if args.file:
        return send_file(args)
    if args.threads < 1 or args.count < 0 or args.min_size > args.max_size:
        parser.error("need --threads >= 1, --count >= 0, --min-size <= --max-size")

    results = {}
    threads = []
    for index in range(args.threads):
        quota = args.count // args.threads + (1 if index < args.count % args.threads else 0)
        thread = threading.Thread(target=worker, args=(args, index, quota, results))
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    accepted = sum(a for a, _ in results.values())
    attempts = sum(t for _, t in results.values())
    sys.stderr.write(f"send.py: {accepted} accepted of {attempts} attempts\n")
    wanted = args.count
    return 0 if accepted >= wanted and (args.until_accepted or accepted == attempts) else 1


if __name__ == "__main__":
    sys.exit(main())
