#!/usr/bin/env bash
# Peak RSS of the daemon while it relays large messages (issue 9 item 3).
#
# Starts an ecbench sink and the daemon (2 shards, everything relayed to
# the sink) in a fresh directory, reads the daemon's VmRSS once it is idle,
# sends SESSIONS concurrent messages of SIZE with `ecbench send`, waits until
# the sink has them all, and prints the daemon's VmHWM (peak RSS since
# start) and the peak above idle. Used for docs/benchmarks.md:
#
#   bench/scripts/large_rss.sh target/release/ecelerity target/release/ecbench
#
# Environment: SESSIONS (20), SIZE (50m), PORT_BASE (27100), KEEP=1 keeps
# the directory.
set -euo pipefail

daemon_bin=$(realpath "${1:?usage: large_rss.sh ECELERITY_BIN ECBENCH_BIN}")
ecbench_bin=$(realpath "${2:?usage: large_rss.sh ECELERITY_BIN ECBENCH_BIN}")
sessions=${SESSIONS:-20}
size=${SIZE:-50m}
port_base=${PORT_BASE:-27100}
smtp_port=$port_base
sink_port=$((port_base + 1))
dir=$(mktemp -d /tmp/ecelerity-large-rss.XXXXXX)
cleanup() {
    [[ -n "${daemon_pid:-}" ]] && kill "$daemon_pid" 2>/dev/null || true
    [[ -n "${sink_pid:-}" ]] && kill "$sink_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    [[ "${KEEP:-0}" == 1 ]] || rm -rf "$dir"
}
trap cleanup EXIT

kib() { awk -v key="$2:" '$1 == key { print $2 }' "/proc/$1/status"; }

cd "$dir"
cat > ecelerity.conf <<EOF
spoolbase = "spool"
pidfile = "ecelerity.pid"
hostname = "rss.test"
shards = 2
relay_hosts = ( "127.0.0.0/8" )
gateway = "127.0.0.1:$sink_port"
ESMTP_Listener { Listen "127.0.0.1:$smtp_port" { } }
Control_Listener { Listen "ctl.sock" { File_Mode = 0600 } }
ec_logger "ec_logger" { mainlog = "log/mainlog.ec" rejectlog = "log/rejectlog.ec" paniclog = "log/paniclog.ec" bouncelog = "log/bouncelog.ec" }
EOF

"$ecbench_bin" sink --listen "127.0.0.1:$sink_port" --json sink.json > sink.out 2>&1 &
sink_pid=$!
"$daemon_bin" --config ecelerity.conf > daemon.out 2>&1 &
daemon_pid=$!
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$smtp_port") 2>/dev/null && break
    sleep 0.1
done
sleep 1
idle_kib=$(kib "$daemon_pid" VmRSS)

started=$(date +%s.%N)
"$ecbench_bin" send --to "127.0.0.1:$smtp_port" -c "$sessions" -m "$sessions" -s "$size" \
    > send.out 2>&1
accepted=$(date +%s.%N)
# Wait for every message to be delivered: the mainlog has one D line each.
for _ in $(seq 600); do
    delivered=$(grep -c '@D@' log/mainlog.ec 2>/dev/null || true)
    [[ "${delivered:-0}" -ge "$sessions" ]] && break
    sleep 0.5
done
done_at=$(date +%s.%N)
peak_kib=$(kib "$daemon_pid" VmHWM)
rss_kib=$(kib "$daemon_pid" VmRSS)

echo "daemon: $daemon_bin"
echo "messages: $sessions concurrent x $size; delivered: ${delivered:-0}"
echo "accepted in $(echo "$accepted - $started" | bc) s, delivered after $(echo "$done_at - $started" | bc) s"
echo "idle VmRSS: $((idle_kib / 1024)) MiB"
echo "peak VmHWM: $((peak_kib / 1024)) MiB"
echo "peak above idle: $(((peak_kib - idle_kib) / 1024)) MiB"
echo "VmRSS after: $((rss_kib / 1024)) MiB"
grep -E 'msgs/s|accepted|failed|error' send.out | head -5 || true
