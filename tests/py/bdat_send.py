#!/usr/bin/env python3
"""Send one message with BDAT (RFC 3030 CHUNKING) through Python's smtplib.

No SMTP client packaged on Debian 12 sends BDAT (swaks 20201014 has no
--bdat, Postfix's smtp and smtp-source never send it, Python's smtplib has
no bdat()), so this is the closest independent client: smtplib makes the
connection, sends EHLO/MAIL/RCPT, parses every reply and tells whether
CHUNKING was offered (has_extn); the BDAT command lines and their octets
are written with smtplib's own send() and each reply read with its
getreply(). Nothing here parses SMTP by hand.

Usage: bdat_send.py PORT FROM TO FILE CHUNK_BYTES [--zero-last] [--noop]
  --zero-last  end with an empty "BDAT 0 LAST" instead of marking the
               last data chunk LAST
  --noop       send NOOP after the message and print its reply too
  --pipeline   write MAIL, RCPT and every chunk in one go (RFC 2920), then
               read and print every reply (MAIL's and RCPT's included)
Prints one line per reply after RCPT: "CODE TEXT". Exit status 0 when
CHUNKING was offered, 3 when it was not.
"""

import smtplib
import sys


def main():
    port, mail_from, rcpt, path, chunk_bytes = sys.argv[1:6]
    flags = set(sys.argv[6:])
    chunk_bytes = int(chunk_bytes)
    with open(path, "rb") as f:
        body = f.read()
    smtp = smtplib.SMTP("127.0.0.1", int(port), timeout=120)
    smtp.ehlo("bdat-client.test")
    if not smtp.has_extn("chunking"):
        print("CHUNKING not offered")
        smtp.quit()
        return 3
    if "--pipeline" in flags:
        return pipelined(smtp, mail_from, rcpt, body, chunk_bytes)
    code, text = smtp.mail(mail_from)
    if code != 250:
        print(f"{code} {text.decode()}")
        return 1
    code, text = smtp.rcpt(rcpt)
    if code != 250:
        print(f"{code} {text.decode()}")
        return 1
    chunks = [body[i : i + chunk_bytes] for i in range(0, len(body), chunk_bytes)]
    zero_last = "--zero-last" in flags or not chunks
    for index, chunk in enumerate(chunks):
        last = index + 1 == len(chunks) and not zero_last
        marker = " LAST" if last else ""
        smtp.send(f"BDAT {len(chunk)}{marker}\r\n".encode("ascii") + chunk)
        code, text = smtp.getreply()
        print(f"{code} {text.decode()}", flush=True)
    if zero_last:
        smtp.send(b"BDAT 0 LAST\r\n")
        code, text = smtp.getreply()
        print(f"{code} {text.decode()}", flush=True)
    if "--noop" in flags:
        code, text = smtp.noop()
        print(f"{code} {text.decode()}", flush=True)
    smtp.quit()
    return 0


def pipelined(smtp, mail_from, rcpt, body, chunk_bytes):
    chunks = [body[i : i + chunk_bytes] for i in range(0, len(body), chunk_bytes)]
    data = f"MAIL FROM:<{mail_from}>\r\nRCPT TO:<{rcpt}>\r\n".encode("ascii")
    for index, chunk in enumerate(chunks):
        marker = " LAST" if index + 1 == len(chunks) else ""
        data += f"BDAT {len(chunk)}{marker}\r\n".encode("ascii") + chunk
    if not chunks:
        data += b"BDAT 0 LAST\r\n"
    smtp.send(data)
    for _ in range(2 + max(len(chunks), 1)):
        code, text = smtp.getreply()
        print(f"{code} {text.decode()}", flush=True)
    smtp.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
