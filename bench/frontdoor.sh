#!/usr/bin/env bash
# Front-door figures: the same client, `supervisor bench --socket` (N framed
# Go clients, one echo in flight each, every echo checked byte for byte),
# against four servers on a Unix socket path, in one invocation, rounds
# interleaved:
#
#   serve     supervisor serve: the front door alone, answering echoes itself
#   fwd       supervisor run --socket --handoff=false: the supervisor forwards
#             every echo to a worker over its socketpair
#   handoff   supervisor run --socket: each client is handed to a worker,
#             which serves it directly
#   epoll     bench/epoll_echo.c, a C epoll echo server: the machine's limit
#
# Loads: 1 client echoing 64 KiB and 1 client echoing 1 MiB (SECS each), and
# CLIENTS (1000) clients echoing 4 KiB (LOAD_SECS). fwd and handoff run with
# WORKERS workers (16); with BIG_WORKERS (256) set, fwd-big and handoff-big
# also take the CLIENTS load with that many workers, and handoff-few with
# FEW_WORKERS (the number of CPUs; 0: not run). For every run it records the
# server's CPU time (the supervisor's alone, and with its workers) and the
# context switches of the server's processes.
#
#   bash bench/frontdoor.sh                              # 3 rounds, ~10 minutes
#   ROUNDS=1 SECS=1 LOAD_SECS=2 CLIENTS=100 BIG_WORKERS=0 bash bench/frontdoor.sh   # smoke
#
# Output: a Markdown table (medians across rounds [min–max], ratios of the
# medians) on stdout and in bench/bin/last-frontdoor/table.md, with every
# JSON result, server log and the job order in that directory.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-5}
LOAD_SECS=${LOAD_SECS:-10}
CLIENTS=${CLIENTS:-1000}
WORKERS=${WORKERS:-16}
BIG_WORKERS=${BIG_WORKERS:-256}
FEW_WORKERS=${FEW_WORKERS:-$(nproc)}
CC=${CC:-gcc}
for v in ROUNDS SECS LOAD_SECS CLIENTS WORKERS BIG_WORKERS FEW_WORKERS; do
	[[ ${!v} =~ ^[0-9]+$ ]] || { echo "frontdoor.sh: $v must be a whole number, got ${!v}" >&2; exit 2; }
done

out=bench/bin/last-frontdoor
rm -rf "$out"
mkdir -p "$out"
go build -o bench/bin/supervisor ./cmd/supervisor
$CC -std=c11 -O2 -Wall -Wextra -pthread -o bench/bin/epoll_echo bench/epoll_echo.c
sv=bench/bin/supervisor
dir=$(mktemp -d /tmp/pvfront.XXXXXX)
pid=
cleanup() {
	if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
	rm -rf "$dir"
}
trap cleanup EXIT

start_s=$(date +%s)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
tck=$(getconf CLK_TCK)
cpu_of() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# tree_stats: CPU ticks and context switches (every thread's, voluntary
# and not) of the server and its children (the workers).
tree_stats() {
	local p cpu=0 cs=0 c u
	for p in $pid $(pgrep -P "$pid"); do
		u=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null) || continue
		c=$(cat /proc/"$p"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {s += $2} END {print s + 0}')
		cpu=$((cpu + u))
		cs=$((cs + c))
	done
	echo "$cpu $cs"
}

# start TARGET: starts the server for TARGET on $dir/s and waits until it
# serves; sets pid.
start() {
	local t=$1 sock=$dir/s log=$out/$1.$round.log
	rm -f "$sock"
	case $t in
	serve) $sv serve --socket "$sock" --log-level warn >"$log" 2>&1 & ;;
	fwd) $sv run --workers "$WORKERS" --socket "$sock" --handoff=false --echo-interval 0 --log-level info >"$log" 2>&1 & ;;
	handoff) $sv run --workers "$WORKERS" --socket "$sock" --echo-interval 0 --log-level info >"$log" 2>&1 & ;;
	fwd-big) $sv run --workers "$BIG_WORKERS" --socket "$sock" --handoff=false --echo-interval 0 --log-level info >"$log" 2>&1 & ;;
	handoff-big) $sv run --workers "$BIG_WORKERS" --socket "$sock" --echo-interval 0 --log-level info >"$log" 2>&1 & ;;
	handoff-few) $sv run --workers "$FEW_WORKERS" --socket "$sock" --echo-interval 0 --log-level info >"$log" 2>&1 & ;;
	epoll) bench/bin/epoll_echo "$sock" >"$log" 2>&1 & ;;
	esac
	pid=$!
	for _ in $(seq 600); do
		if $sv ping --socket "$sock" >/dev/null 2>&1; then
			case $t in
			serve | epoll) return 0 ;;
			*) grep -q 'all workers ready' "$log" && return 0 ;;
			esac
		fi
		sleep 0.1 # waiting for another process to start; nothing to synchronise on
	done
	echo "frontdoor.sh: $t did not start" >&2
	tail -5 "$log" >&2
	exit 1
}

stop() {
	kill -TERM "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	pid=
}

# measure TARGET LOAD CLIENTS SIZE SECONDS: one load, its JSON in $out.
measure() {
	local f=$out/$1.$2.$round.json c0 c1 t0 t1 a0 a1 s0 s1
	c0=$(cpu_of "$pid")
	read -r a0 s0 < <(tree_stats)
	t0=$(date +%s.%N)
	if ! $sv bench --socket "$dir/s" --clients "$3" --size "$4" --duration "${5}s" --json >"$f" 2>"$f.err"; then
		echo "frontdoor.sh: warning: $1 $2 round $round failed (see $f.err)" >&2
		status=1
	fi
	c1=$(cpu_of "$pid")
	read -r a1 s1 < <(tree_stats)
	t1=$(date +%s.%N)
	echo "$1 $2 $round $(awk -v c0="$c0" -v c1="$c1" -v a0="$a0" -v a1="$a1" -v t0="$t0" -v t1="$t1" -v tck="$tck" \
		'BEGIN { printf "%.1f %.1f", 100 * (c1 - c0) / tck / (t1 - t0), 100 * (a1 - a0) / tck / (t1 - t0) }') $((s1 - s0))" >>"$out/cpu.txt"
}

targets=(serve fwd handoff epoll)
if [ "$BIG_WORKERS" -gt 0 ]; then targets+=(fwd-big handoff-big); fi
if [ "$FEW_WORKERS" -gt 0 ]; then targets+=(handoff-few); fi
status=0
for round in $(seq "$ROUNDS"); do
	n=${#targets[@]}
	order=()
	for i in $(seq 0 $((n - 1))); do order+=("${targets[$(((i + round - 1) % n))]}"); done
	echo "round $round: ${order[*]}" | tee -a "$out/order.txt" >&2
	for t in "${order[@]}"; do
		start "$t"
		case $t in
		*-big | *-few) ;;
		*)
			measure "$t" 64KiB 1 65536 "$SECS"
			measure "$t" 1MiB 1 1048576 "$SECS"
			;;
		esac
		measure "$t" "${CLIENTS}x4KiB" "$CLIENTS" 4096 "$LOAD_SECS"
		echo "$t $round load $(cut -d' ' -f1 /proc/loadavg)" >>"$out/jobs.txt"
		stop
	done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
wall=$(($(date +%s) - start_s))

{
	echo "# Front door: supervisor serve, run --socket (forwarding, handing over) and a C epoll server"
	echo
	echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "kernel: $(uname -r)"
	echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(nproc) CPUs"
	echo "toolchains: $(go version); $($CC --version | head -1)"
	echo "pairvisor: git $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!bench/bin' || echo -dirty)"
	echo "rounds: $ROUNDS, order rotated each round; single clients ${SECS}s each, $CLIENTS clients ${LOAD_SECS}s; workers $WORKERS (big: $BIG_WORKERS, few: $FEW_WORKERS)"
	echo "loadavg before: $load_before; after: $load_after; wall time: ${wall}s"
	echo
	python3 - "$out" "$CLIENTS" "$WORKERS" "$BIG_WORKERS" "$FEW_WORKERS" <<'EOF'
import glob, json, os, statistics, sys
out, clients, workers, big, few = sys.argv[1:6]
vals = {}
for f in glob.glob(os.path.join(out, '*.json')):
    t, load, rnd = os.path.basename(f)[:-5].rsplit('.', 2)
    try:
        d = json.load(open(f))
    except Exception:
        continue
    v = vals.setdefault((t, load), {})
    for k in ('round_trips_per_s', 'mb_per_s', 'failed', 'corrupted', 'busy'):
        v.setdefault(k, []).append(d.get(k, 0))
    v.setdefault('p50', []).append(d['latency']['p50_us'])
    v.setdefault('p99', []).append(d['latency']['p99_us'])
rts = {}
for f in glob.glob(os.path.join(out, '*.json')):
    t, load, rnd = os.path.basename(f)[:-5].rsplit('.', 2)
    try:
        rts[(t, load, rnd)] = json.load(open(f))['round_trips']
    except Exception:
        pass
for line in open(os.path.join(out, 'cpu.txt')):
    t, load, rnd, cpu, tree, cs = line.split()
    v = vals.setdefault((t, load), {})
    v.setdefault('cpu', []).append(float(cpu))
    v.setdefault('tree', []).append(float(tree))
    if rts.get((t, load, rnd)):
        v.setdefault('cs', []).append(int(cs) / rts[(t, load, rnd)])

def med(t, load, k):
    xs = vals.get((t, load), {}).get(k)
    return statistics.median(xs) if xs else None

def cell(t, load, k, fmt='{:,.0f}'):
    xs = vals.get((t, load), {}).get(k)
    if not xs:
        return 'n/a'
    return (fmt + ' [' + fmt + '–' + fmt + ']').format(statistics.median(xs), min(xs), max(xs))

def total(t, load, k):
    xs = vals.get((t, load), {}).get(k)
    return 'n/a' if xs is None else str(int(sum(xs)))

def ratio(a, b):
    return 'n/a' if a is None or not b else '{:.2f}×'.format(a / b)

names = {'serve': 'serve', 'fwd': f'run, forwarding ({workers} workers)', 'handoff': f'run, handing over ({workers} workers)',
         'epoll': 'C epoll server', 'fwd-big': f'run, forwarding ({big} workers)', 'handoff-big': f'run, handing over ({big} workers)',
         'handoff-few': f'run, handing over ({few} workers)'}
print('### One client, one echo in flight (MB/s, payload one way)')
print()
print('| server | 64 KiB MB/s | ÷ serve | 1 MiB MB/s | ÷ serve | server CPU %, 64 KiB / 1 MiB | all its processes\' CPU %, 64 KiB / 1 MiB |')
print('|---|---:|---:|---:|---:|---:|---:|')
for t in ('serve', 'fwd', 'handoff', 'epoll'):
    print('| {} | {} | {} | {} | {} | {} / {} | {} / {} |'.format(names[t], cell(t, '64KiB', 'mb_per_s'), ratio(med(t, '64KiB', 'mb_per_s'), med('serve', '64KiB', 'mb_per_s')),
          cell(t, '1MiB', 'mb_per_s'), ratio(med(t, '1MiB', 'mb_per_s'), med('serve', '1MiB', 'mb_per_s')),
          cell(t, '64KiB', 'cpu'), cell(t, '1MiB', 'cpu'), cell(t, '64KiB', 'tree'), cell(t, '1MiB', 'tree')))
load = f'{clients}x4KiB'
print()
print(f'### {clients} clients echoing 4 KiB')
print()
print('| server | round trips/s | ÷ C epoll | p50 µs | p99 µs | p99 ÷ C epoll | failed | corrupted | busy | server CPU % | all its processes\' CPU % | context switches per round trip |')
print('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
for t in ('serve', 'fwd', 'handoff', 'handoff-few', 'fwd-big', 'handoff-big', 'epoll'):
    if (t, load) not in vals:
        continue
    print('| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |'.format(names[t], cell(t, load, 'round_trips_per_s'),
          ratio(med(t, load, 'round_trips_per_s'), med('epoll', load, 'round_trips_per_s')),
          cell(t, load, 'p50'), cell(t, load, 'p99'), ratio(med(t, load, 'p99'), med('epoll', load, 'p99')),
          total(t, load, 'failed'), total(t, load, 'corrupted'), total(t, load, 'busy'), cell(t, load, 'cpu'), cell(t, load, 'tree'),
          cell(t, load, 'cs', '{:.2f}')))
print()
print('### Targets')
print()
print('| target | measured | result |')
print('|---|---:|---|')
for size in ('64KiB', '1MiB'):
    r = med('handoff', size, 'mb_per_s') / med('serve', size, 'mb_per_s') if med('handoff', size, 'mb_per_s') and med('serve', size, 'mb_per_s') else None
    print('| {} echo through run --socket ≥ 0.9× serve | {} | {} |'.format(size.replace('KiB', ' KiB').replace('MiB', ' MiB'), 'n/a' if r is None else '{:.2f}×'.format(r), 'n/a' if r is None else ('met' if r >= 0.9 else 'NOT met')))
for t in ('handoff', 'handoff-few', 'handoff-big'):
    if (t, load) in vals:
        f, c = total(t, load, 'failed'), total(t, load, 'corrupted')
        print('| {} clients × 4 KiB through {}: 0 failed, 0 corrupted | {} failed, {} corrupted | {} |'.format(clients, names[t], f, c, 'met' if f == '0' and c == '0' else 'NOT met'))
EOF
	echo
	echo "Cells: median across rounds [min–max]; ratios of the medians. busy: \"server busy\" answers"
	echo "(code 3), retried by the client after 10 ms. server CPU: the server process's user+system"
	echo "time over the measurement's wall time (100 % = one core); for run, the supervisor alone, and"
	echo "in the next column with its workers. Context switches: every thread's, voluntary or not, of the"
	echo "server and its workers (not the client's), over the round trips."
	echo "Raw results: $out (TARGET.LOAD.ROUND.json, *.log, cpu.txt, order.txt, jobs.txt)."
} | tee "$out/table.md"
exit $status
