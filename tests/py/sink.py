#!/usr/bin/env python3
"""SMTP sink for the ecelerity end-to-end tests (aiosmtpd).

Listens on HOST:PORT and stores every accepted transaction in DIR:
  DIR/NNNNNNNN.eml  the exact bytes of the DATA content (dot-unstuffed, CRLF
                    line endings, as the client sent them), one file per
                    transaction;
  DIR/index.txt     one line per stored file, appended after the file is
                    complete: "mailfrom<TAB>rcpt1,rcpt2<TAB>NNNNNNNN.eml<TAB>peer<TAB>ehlo<TAB>tls",
                    peer being the client's IP address (the source address
                    the message came from), ehlo the name it greeted with,
                    tls the TLS version of the session ("-" in clear text).
TLS: --tls-cert/--tls-key offer STARTTLS (aiosmtpd's tls_context),
--require-starttls refuses mail in clear text, --tls-client-ca CA demands
a client certificate signed by CA, --broken-starttls answers
STARTTLS with 220 and then garbage instead of a handshake (mail in clear
text is still taken).
A restarted sink continues the numbering after the last index line.

Replies are scripted by the recipient's local part (first matching prefix,
case-insensitive):
  tempfail*  -> 451 4.3.0 at RCPT TO
  reject*    -> 550 5.1.1 at RCPT TO
  datafail*  -> accepted at RCPT TO, 451 4.3.0 after DATA (nothing stored)
More rules: --rule PREFIX=CODE (RCPT stage) or --data-rule PREFIX=CODE; a
rule may give the whole reply instead, e.g. --rule "full=552 5.2.2 mailbox full".

--auth USER:PASSWORD offers AUTH PLAIN LOGIN without TLS and requires it
before MAIL; every attempt is appended to DIR/auth.txt as
"mechanism<TAB>user<TAB>password<TAB>ok|fail".

Every MAIL and RCPT argument is appended to DIR/commands.txt as the client
wrote it ("MAIL<TAB>FROM:<a@b> SMTPUTF8"). --no-smtputf8 stops offering
SMTPUTF8; --dsn offers DSN (RFC 3461) and accepts its parameters (RET,
ENVID, NOTIFY, ORCPT), which aiosmtpd itself does not know.
"""

import argparse
import asyncio
import os
import signal
import ssl
import sys

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

# Longest DATA or command line the sink accepts. Generous on purpose: the
# sink must never be the component that rejects a test message.
LINE_BYTES_MAX = 1024 * 1024
# Largest message the sink accepts.
DATA_BYTES_MAX = 256 * 1024 * 1024
INDEX_NAME = "index.txt"
# --broken-starttls: pause between the 220 and the garbage.
BROKEN_STARTTLS_PAUSE_S = 0.3

RCPT_RULES_DEFAULT = [
    ("tempfail", "451 4.3.0 tempfail requested by recipient"),
    ("reject", "550 5.1.1 reject requested by recipient"),
]
DATA_RULES_DEFAULT = [
    ("datafail", "451 4.3.0 datafail requested by recipient"),
]


def reply_for(code):
    code = int(code)
    if not 200 <= code <= 599:
        raise argparse.ArgumentTypeError(f"reply code {code} out of range")
    enhanced = {2: "2.0.0", 4: "4.3.0", 5: "5.1.1"}.get(code // 100, "")
    return f"{code} {enhanced} scripted by sink".replace("  ", " ")


def parse_rule(text):
    prefix, sep, reply = text.partition("=")
    if not sep or not prefix:
        raise argparse.ArgumentTypeError(f"rule {text!r} is not PREFIX=CODE")
    code, space, _ = reply.partition(" ")
    if space:
        reply_for(code)  # checks the code's range
        return (prefix.lower(), reply)
    return (prefix.lower(), reply_for(code))


def local_part(address):
    return address.rsplit("@", 1)[0].lower()


def first_match(rules, address):
    local = local_part(address)
    for prefix, reply in rules:
        if local.startswith(prefix):
            return reply
    return None


class Store:
    def __init__(self, directory):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self.index_path = os.path.join(directory, INDEX_NAME)
        self.sequence = 0
        if os.path.exists(self.index_path):
            with open(self.index_path, "rb") as index:
                self.sequence = sum(1 for _ in index)

    def save(self, mail_from, rcpts, content, peer, ehlo, tls="-"):
        self.sequence += 1
        name = f"{self.sequence:08d}.eml"
        with open(os.path.join(self.directory, name), "wb") as message:
            message.write(content)
        line = f"{mail_from}\t{','.join(rcpts)}\t{name}\t{peer}\t{ehlo}\t{tls}\n"
        with open(self.index_path, "a", encoding="utf-8", errors="surrogateescape") as index:
            index.write(line)
        return name


class Handler:
    def __init__(self, store, rcpt_rules, data_rules, dsn=False):
        self.store = store
        self.rcpt_rules = rcpt_rules
        self.data_rules = data_rules
        self.dsn = dsn

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.dsn:
            responses.insert(len(responses) - 1, "250-DSN")
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = first_match(self.rcpt_rules, address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        for rcpt in envelope.rcpt_tos:
            reply = first_match(self.data_rules, rcpt)
            if reply is not None:
                return reply
        peer = session.peer[0] if session.peer else "unknown"
        ehlo = session.host_name or ""
        name = self.store.save(
            envelope.mail_from, envelope.rcpt_tos, envelope.original_content, peer, ehlo,
            tls_version(server, session),
        )
        return f"250 2.0.0 Ok: queued as {name}"


def tls_version(server, session):
    """The TLS version of the session ("TLSv1.3"), or "-" in clear text."""
    extra = getattr(session, "ssl", None)
    if not extra:
        return "-"
    obj = extra.get("ssl_object") if isinstance(extra, dict) else None
    if obj is None and server.transport is not None:
        obj = server.transport.get_extra_info("ssl_object")
    return obj.version() if obj is not None else "TLS"


DSN_PARAMETERS = ("RET=", "ENVID=", "NOTIFY=", "ORCPT=")


class Recording(SMTP):
    """Appends each MAIL and RCPT argument to DIR/commands.txt as written;
    with --dsn, takes the DSN parameters off before aiosmtpd reads them."""

    commands_path = None
    dsn = False

    def _record(self, verb, arg):
        if self.commands_path and arg is not None:
            with open(self.commands_path, "a", encoding="utf-8", errors="surrogateescape") as f:
                f.write(f"{verb}\t{arg}\n")

    def _without_dsn(self, arg):
        if not self.dsn or arg is None:
            return arg
        words = arg.split(" ")
        return " ".join(w for w in words if not w.upper().startswith(DSN_PARAMETERS))

    async def smtp_MAIL(self, arg):
        self._record("MAIL", arg)
        await super().smtp_MAIL(self._without_dsn(arg))

    async def smtp_RCPT(self, arg):
        self._record("RCPT", arg)
        await super().smtp_RCPT(self._without_dsn(arg))


class BrokenStartTls(SMTP):
    """Offers STARTTLS, answers 220, then sends garbage and hangs up."""

    async def smtp_STARTTLS(self, arg):
        await self.push("220 2.0.0 Ready to start TLS")
        # Let the client start its handshake, so the garbage is read as TLS
        # (garbage in the same packet as the 220 is refused before that).
        await asyncio.sleep(BROKEN_STARTTLS_PAUSE_S)
        self.transport.write(b"\x15\x03\x03\x00\x02this is no handshake\r\n")
        self.transport.close()
class Authenticator:
    """Accepts one user and password; records every attempt."""

    def __init__(self, directory, user_password):
        self.path = os.path.join(directory, "auth.txt")
        self.user, _, self.password = user_password.partition(":")

    def __call__(self, server, session, envelope, mechanism, auth_data):
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user = auth_data.login.decode("utf-8", "surrogateescape")
        password = auth_data.password.decode("utf-8", "surrogateescape")
        ok = user == self.user and password == self.password
        with open(self.path, "a", encoding="utf-8", errors="surrogateescape") as log:
            log.write(f"{mechanism}\t{user}\t{password}\t{'ok' if ok else 'fail'}\n")
        return AuthResult(success=ok)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--rule", type=parse_rule, action="append", default=[])
    parser.add_argument("--data-rule", type=parse_rule, action="append", default=[])
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--require-starttls", action="store_true")
    parser.add_argument("--tls-client-ca", help="demand a client certificate signed by this CA")
    parser.add_argument("--broken-starttls", action="store_true")
    parser.add_argument("--auth", help="USER:PASSWORD required before MAIL")
    parser.add_argument("--no-smtputf8", action="store_true", help="do not offer SMTPUTF8")
    parser.add_argument("--dsn", action="store_true", help="offer DSN and take its parameters")
    args = parser.parse_args()
    tls_context = None
    if args.tls_cert:
        tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls_context.load_cert_chain(args.tls_cert, args.tls_key)
        if args.tls_client_ca:
            tls_context.verify_mode = ssl.CERT_REQUIRED
            tls_context.load_verify_locations(args.tls_client_ca)
    authenticator = Authenticator(args.dir, args.auth) if args.auth else None

    store = Store(args.dir)
    handler = Handler(
        store, args.rule + RCPT_RULES_DEFAULT, args.data_rule + DATA_RULES_DEFAULT, args.dsn
    )
    Recording.commands_path = os.path.join(args.dir, "commands.txt")
    Recording.dsn = args.dsn

    def factory():
        kind = BrokenStartTls if args.broken_starttls else Recording
        smtp = kind(
            handler,
            hostname="sink.test",
            data_size_limit=DATA_BYTES_MAX,
            decode_data=False,
            enable_SMTPUTF8=not args.no_smtputf8,
            tls_context=tls_context,
            require_starttls=args.require_starttls,
            authenticator=authenticator,
            auth_required=authenticator is not None,
            auth_require_tls=False,
        )
        smtp.line_length_limit = LINE_BYTES_MAX
        return smtp

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(
        loop.create_server(factory, host=args.host, port=args.port, reuse_address=True)
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"sink listening on {args.host}:{args.port}, storing in {args.dir}", flush=True)
    loop.run_until_complete(stop.wait())
    server.close()
    loop.run_until_complete(server.wait_closed())
    loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
