#!/usr/bin/env python3
"""Sends one message with smtplib after AUTH (login()), for the AUTH tests.

auth_send.py --port P --user U --password W [--mech PLAIN|LOGIN]
             --from A --to B --message FILE
Prints one line: "sent", "auth <code> <text>" when login() failed,
"refused <code> <text>" when the message was refused, or
"closed" when the server hung up.
"""

import argparse
import smtplib
import sys


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--mech", choices=["PLAIN", "LOGIN"])
    parser.add_argument("--from", dest="sender", required=True)
    parser.add_argument("--to", required=True)
    parser.add_argument("--message", required=True)
    args = parser.parse_args()
    with open(args.message, "rb") as f:
        message = f.read()
    try:
        with smtplib.SMTP("127.0.0.1", args.port, timeout=60) as smtp:
            smtp.ehlo("client.test")
            if args.mech:
                # login() tries what the server offers; keep only this one.
                smtp.esmtp_features["auth"] = args.mech
            try:
                smtp.login(args.user, args.password)
            except smtplib.SMTPAuthenticationError as e:
                print(f"auth {e.smtp_code} {e.smtp_error.decode()}")
                return 0
            except smtplib.SMTPResponseException as e:
                print(f"auth {e.smtp_code} {e.smtp_error.decode()}")
                return 0
            try:
                smtp.sendmail(args.sender, [args.to], message)
            except smtplib.SMTPRecipientsRefused as e:
                code, text = e.recipients[args.to]
                print(f"refused {code} {text.decode()}")
                return 0
            except smtplib.SMTPResponseException as e:
                print(f"refused {e.smtp_code} {e.smtp_error.decode()}")
                return 0
    except smtplib.SMTPServerDisconnected:
        print("closed")
        return 0
    print("sent")
    return 0


if __name__ == "__main__":
    sys.exit(main())
