#!/usr/bin/env python3
"""Split a daemon profile into exclusive cost categories, one per sample.

Used for docs/benchmarks.md, "Client shapes (issue 9)":
    perf record -F 999 -g -p $(cat ecelerity.pid) -o perf.data -- sleep 5
    perf script -i perf.data | bench/scripts/perf_categories.py

A sample of an io_uring worker thread (iou-wrk-*) goes by the operation it
serves; a sample of a shard thread by its leaf when it is the context-switch
tail, else by the first matching kernel path on its stack (send, recv,
membarrier, glommio's timeout/cancel SQEs, accept/close, io_uring entry),
else by its user-space leaf. The rules are heuristics on symbol names
(kernel 6.18, glommio 0.9); read the flat profile beside it.
"""
import sys, collections
def classify(comm, frames):
    syms = [f[1] for f in frames]
    leaf = syms[0] if syms else ''
    has = lambda *names: any(any(n in s for n in names) for s in syms)
    if comm.startswith('iou-wrk'):
        if has('io_fsync'): return 'io-wq: fdatasync' + (' (inode write)' if has('ext4_write_inode') else '')
        if has('io_write'): return 'io-wq: buffered write'
        return 'io-wq: worker sleep/wake'
    if leaf.startswith('finish_task_switch') or leaf in ('__schedule', 'schedule'): return 'shard: context switch'
    if has('membarrier'): return 'shard: membarrier IPI before park'
    if has('io_async_cancel', 'io_timeout'): return 'shard: glommio timeout arm/cancel'
    if has('__sys_sendto', '__x64_sys_sendto'): return 'shard: TCP send (loopback, incl. peer receive)'
    if has('__sys_recvfrom', 'tcp_recvmsg'): return 'shard: TCP recv'
    if has('do_accept', 'io_accept', '__sys_accept4', '__fput', '__x64_sys_close', '__sys_shutdown', 'tcp_close'): return 'shard: accept/shutdown/close'
    if has('pread64'): return 'shard: body pread'
    if has('__do_sys_io_uring_enter', 'task_work_run', 'io_submit_sqes'): return 'shard: io_uring submit/complete'
    dso = frames[0][2] if frames else ''
    if '[kernel' in dso: return 'shard: other kernel (irq, softirq, syscall entry)'
    if leaf.startswith(('malloc', '_int_malloc', '_int_free', 'cfree', 'free', 'malloc_consolidate', 'unlink_chunk')): return 'user: allocator'
    if leaf.startswith('__mem'): return 'user: memcpy/memset'
    if 'glommio' in leaf or 'io_uring' in leaf or 'futures_lite' in leaf: return 'user: glommio runtime'
    if 'ecelerity' in leaf: return 'user: ecelerity engine code'
    return 'user: other (std, libc, vdso)'
counts = collections.Counter(); total = 0
comm = None; frames = []
def flush():
    global total
    if comm is not None:
        counts[classify(comm, frames)] += 1; total += 1
for line in sys.stdin:
    if not line.strip():
        flush(); comm = None; frames = []; continue
    if not line.startswith((' ', '\t')):
        comm = line.split()[0]; frames = []; continue
    parts = line.strip().split(None, 1)
    if len(parts) == 2:
        sym_dso = parts[1]
        sym = sym_dso.rsplit(' (', 1)[0].split('+0x')[0]
        dso = sym_dso.rsplit(' (', 1)[-1]
        frames.append((parts[0], sym, dso))
flush()
for k, v in sorted(counts.items(), key=lambda kv: -kv[1]):
    print(f"{100*v/total:5.1f}%  {k}")
print(f"({total} samples)")
