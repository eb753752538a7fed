#!/usr/bin/env python3
"""Reads a delivery status notification (RFC 3464, with the RFC 3461
fields) with Python's email package and prints, one fact per line:
  subject<TAB>Subject
  to<TAB>To
  parts<TAB>text/plain,message/delivery-status,text/rfc822-headers
  message<TAB>Name<TAB>value        (the per-message fields)
  rcpt<TAB>N<TAB>Name<TAB>value     (the fields of recipient group N)
  returned<TAB>JSON string of the third part (headers, or the message)
  returned-body<TAB>JSON string of the returned message's decoded body
Usage: dsn_fields.py FILE
"""

import json
import sys
from email import message_from_binary_file, policy


def main():
    with open(sys.argv[1], "rb") as f:
        msg = message_from_binary_file(f, policy=policy.compat32)
    print(f"subject\t{msg['Subject']}")
    # The To header as its bytes say (UTF-8 for a UTF-8 return path, RFC
    # 6532), which compat32 would only give back surrogate-escaped.
    with open(sys.argv[1], "rb") as f:
        head = f.read().split(b"\r\n\r\n", 1)[0]
    to = next(l[3:] for l in head.split(b"\r\n") if l.lower().startswith(b"to:"))
    print(f"to\t{to.decode('utf-8').strip()}")
    parts = msg.get_payload()
    print("parts\t" + ",".join(p.get_content_type() for p in parts))
    status = parts[1].get_payload()
    for name, value in status[0].items():
        print(f"message\t{name}\t{value}")
    for n, group in enumerate(status[1:]):
        for name, value in group.items():
            print(f"rcpt\t{n}\t{name}\t{value}")
    returned = parts[2].get_payload()
    if not isinstance(returned, str):
        inner = returned[0] if returned else None
        returned = inner.as_string() if inner else ""
        if inner is not None:
            body = inner.get_payload(decode=True) or b""
            print("returned-body\t" + json.dumps(body.decode("utf-8", "replace")))
    print("returned\t" + json.dumps(returned))
    return 0


if __name__ == "__main__":
    sys.exit(main())
