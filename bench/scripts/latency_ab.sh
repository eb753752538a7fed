#!/usr/bin/env bash
# Accept latency of two ecelerity binaries, alternated so that both see the
# same machine: `ecbench scenario latency` (peak, then 50 % and 90 % of it,
# open loop) ROUNDS times each, then the spool's own split of each run's
# group commits (wait before write; write + fdatasync), which the daemon
# logs at info level when it stops.
#   bench/scripts/latency_ab.sh ECBENCH BIN_A BIN_B [ROUNDS]
set -euo pipefail
ecbench=$1 a=$2 b=$3 rounds=${4:-2}
work=$(mktemp -d /tmp/ecelerity-latency-ab.XXXXXX)
trap 'rm -rf "$work"' EXIT
# ecbench starts the daemon with --log-level warn; this wrapper raises it
# to info so that the spool's commit split reaches the paniclog.
wrap() {
    printf '#!/usr/bin/env bash\nargs=("$@"); for i in "${!args[@]}"; do [ "${args[$i]}" = warn ] && args[$i]=info; done\nexec %q "${args[@]}"\n' "$1" >"$2"
    chmod +x "$2"
}
wrap "$a" "$work/a"
wrap "$b" "$work/b"
for round in $(seq 1 "$rounds"); do
    for which in a b; do
        "$ecbench" scenario latency --sizes 1k --concurrency 50 --cell-seconds 6 \
            --messages 30000 --ecelerity-bin "$work/$which" --work-dir "$work/w" \
            --out "$work/out-$which" --quiet >"$work/run.txt" 2>&1 || true
        grep -E '^ecbench: (latency|fdatasync p)' "$work/run.txt" |
            sed "s/^ecbench:/round $round $which:/" || true
        grep -h 'group commit' "$work/w/latency-ecelerity/log/paniclog.ec" |
            sed "s/.*group commit:/round $round $which spool:/" || true
    done
done
