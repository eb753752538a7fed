#!/usr/bin/env python3
"""Sends one message with Python's smtplib, ESMTP parameters and all, and
prints every reply, one per line: "VERB<TAB>code<TAB>text".
  esmtp_send.py --port P --from ADDR [--mail-option OPT ...]
                --to ADDR[ OPT OPT ...] [--to ...] --file MESSAGE
Addresses may be UTF-8: the commands go out in UTF-8 whether or not
SMTPUTF8 was asked for (so a server's refusal of an undeclared UTF-8
address can be tested). DATA is sent only when a recipient was accepted.
"""

import argparse
import smtplib
import sys


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--from", dest="sender", required=True)
    parser.add_argument("--mail-option", action="append", default=[])
    parser.add_argument("--to", action="append", required=True)
    parser.add_argument("--file", required=True)
    args = parser.parse_args()
    with open(args.file, "rb") as f:
        message = f.read()
    smtp = smtplib.SMTP("127.0.0.1", args.port, timeout=60)
    smtp.command_encoding = "utf-8"
    code, text = smtp.ehlo("client.test")
    print(f"EHLO\t{code}\t{text.decode('utf-8', 'replace').replace(chr(10), ' ')}")
    code, text = smtp.mail(args.sender, args.mail_option)
    print(f"MAIL\t{code}\t{text.decode('utf-8', 'replace')}")
    accepted = 0
    if code == 250:
        for to in args.to:
            address, *options = to.split(" ")
            code, text = smtp.rcpt(address, options)
            print(f"RCPT\t{code}\t{text.decode('utf-8', 'replace')}")
            accepted += code == 250
    if accepted:
        code, text = smtp.data(message)
        print(f"DATA\t{code}\t{text.decode('utf-8', 'replace')}")
    smtp.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
