#!/usr/bin/env python3
"""fdatasync cost of appends into a keep-size preallocated file, with and
without zeros written ahead of the records (the spool's
`SpoolOptions::zero_ahead_bytes`), alternated in one run.

  bench/scripts/zero_ahead_probe.py DIR [ROUNDS] [SYNCS] [RECORD_BYTES]

DIR must be on the spool's file system. Each append of RECORD_BYTES is one
pwrite + fdatasync, as a group commit of one record; "ahead" rounds the
zeros up to the next 64 KiB step at least 32 KiB past the records, as the
journal does. Prints per round: fdatasync p50/p99, mean per append, CPU
(user+system) and voluntary context switches per append.
"""
import ctypes
import os
import resource
import sys
import time

FALLOC_FL_KEEP_SIZE = 1
SEGMENT_BYTES = 64 << 20
STEP_BYTES = 64 << 10

libc = ctypes.CDLL("libc.so.6", use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def run(path, ahead, syncs, record_bytes):
    fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o640)
    if libc.fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, SEGMENT_BYTES) != 0:
        raise OSError(ctypes.get_errno(), "fallocate")
    offset = zeroed = 0
    latencies = []
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    record = b"x" * record_bytes
    for _ in range(syncs):
        data = record
        end = offset + record_bytes
        if ahead and end > zeroed:
            zero_end = -(-(end + ahead // 2) // ahead) * ahead
            data = record + bytes(zero_end - end)
            zeroed = zero_end
        t = time.perf_counter()
        os.pwrite(fd, data, offset)
        os.fdatasync(fd)
        latencies.append(time.perf_counter() - t)
        offset = end
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    os.close(fd)
    os.unlink(path)
    latencies.sort()
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    print(
        f"ahead {ahead:6d}: {syncs} appends, fdatasync p50 {latencies[syncs // 2] * 1e6:.0f} us"
        f" p99 {latencies[int(syncs * 0.99)] * 1e6:.0f} us, mean {elapsed / syncs * 1e6:.0f} us,"
        f" CPU {cpu / syncs * 1e6:.0f} us, voluntary switches {(after.ru_nvcsw - before.ru_nvcsw) / syncs:.2f}"
        " per append",
        flush=True,
    )


def main():
    directory = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    syncs = int(sys.argv[3]) if len(sys.argv) > 3 else 1500
    record_bytes = int(sys.argv[4]) if len(sys.argv) > 4 else 1400
    path = os.path.join(directory, f"zero-ahead-probe-{os.getpid()}.seg")
    for _ in range(rounds):
        for ahead in (0, STEP_BYTES):
            run(path, ahead, syncs, record_bytes)


if __name__ == "__main__":
    main()
