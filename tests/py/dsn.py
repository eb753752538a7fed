#!/usr/bin/env python3
"""Reads a delivery status notification (RFC 3464) with Python's email
package and prints what the end-to-end tests check, one fact per line:
  content-type<TAB>multipart/report
  report-type<TAB>delivery-status
  parts<TAB>text/plain,message/delivery-status,text/rfc822-headers
  reporting-mta<TAB>dns; host
  recipient<TAB>rfc822; addr<TAB>action<TAB>status<TAB>diagnostic-code
  will-retry-until<TAB>date (per recipient group that has one: delay DSNs)
  original<TAB>Subject header of the text/rfc822-headers part
Usage: dsn.py FILE
"""

import sys
from email import message_from_binary_file, message_from_string, policy


def main():
    with open(sys.argv[1], "rb") as f:
        msg = message_from_binary_file(f, policy=policy.compat32)
    print(f"content-type\t{msg.get_content_type()}")
    print(f"report-type\t{msg.get_param('report-type')}")
    parts = msg.get_payload()
    print("parts\t" + ",".join(p.get_content_type() for p in parts))
    status = parts[1].get_payload()
    print(f"reporting-mta\t{status[0]['Reporting-MTA']}")
    for group in status[1:]:
        print(
            "recipient\t"
            + "\t".join(
                str(group[name])
                for name in ("Final-Recipient", "Action", "Status", "Diagnostic-Code")
            )
        )
        if group["Will-Retry-Until"] is not None:
            print(f"will-retry-until\t{group['Will-Retry-Until']}")
    original = parts[2].get_payload()
    if not isinstance(original, str):
        original = original[0].as_string() if original else ""
    headers = message_from_string(original)
    print(f"original\t{headers['Subject']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
