#!/usr/bin/env bash
# Scale check: `supervisor run --workers 256 --socket PATH` with 1 s pings.
# Reports the time from start until every worker is ready, the
# supervisor's CPU share and RSS while it supervises them for WATCH
# seconds, then drives CLIENTS concurrent clients echoing 4 KiB through
# the socket for LOAD_SECS seconds (aggregate throughput, p99, failures).
#
#   bash bench/scale.sh                       # 256 workers, 60 s, 1000 clients
#   WORKERS=16 WATCH=5 CLIENTS=50 LOAD_SECS=3 bash bench/scale.sh   # smoke
set -euo pipefail
cd "$(dirname "$0")/.."
WORKERS=${WORKERS:-256}
WATCH=${WATCH:-60}
CLIENTS=${CLIENTS:-1000}
LOAD_SECS=${LOAD_SECS:-10}

mkdir -p bench/bin
# Static, as deployed: see compare.sh.
CGO_ENABLED=0 go build -o bench/bin/supervisor ./cmd/supervisor
dir=$(mktemp -d /tmp/pvscale.XXXXXX)
sock=$dir/s
trap 'kill -TERM $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$dir"' EXIT

bench/bin/supervisor run --workers "$WORKERS" --socket "$sock" --ping-interval 1s \
	--echo-interval 0 --log-json --log-level info 2>"$dir/log" >"$dir/out" &
pid=$!
for _ in $(seq 600); do
	grep -q '"all workers ready"' "$dir/log" && break
	sleep 0.1
done
ready=$(grep '"all workers ready"' "$dir/log" | sed -E 's/.*"elapsed":([0-9]+).*/\1/' | awk '{printf "%.1f ms", $1 / 1e6}')
[ -n "$ready" ] || { echo "workers did not all become ready"; tail -5 "$dir/log"; exit 1; }

tck=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
c0=$(cpu); t0=$(date +%s.%N)
sleep "$WATCH"
c1=$(cpu); t1=$(date +%s.%N)
share=$(awk -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" -v tck="$tck" \
	'BEGIN { printf "%.2f", 100 * (c1 - c0) / tck / (t1 - t0) }')
rss=$(awk '/VmRSS/ {print $2, $3}' "/proc/$pid/status")
threads=$(awk '/Threads/ {print $2}' "/proc/$pid/status")
# The status document lists the workers at its top and again under each program.
answered=$(bench/bin/supervisor status --socket "$sock" --json |
	python3 -c 'import json, sys; print(sum(w.get("state") == "ready" for w in json.load(sys.stdin)["workers"]))')

echo "workers:              $WORKERS ($answered ready at the end of the watch)"
echo "all ready after:      $ready"
echo "supervisor CPU:       $share % of one core over ${WATCH}s of 1 s pings"
echo "supervisor RSS:       $rss, $threads threads"
echo
echo "load: $CLIENTS clients echoing 4 KiB for ${LOAD_SECS}s through the socket"
bench/bin/supervisor bench --socket "$sock" --clients "$CLIENTS" --size 4096 --duration "${LOAD_SECS}s"
