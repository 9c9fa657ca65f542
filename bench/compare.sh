#!/usr/bin/env bash
# compare.sh: pairvisor's Go IPC benchmarks against the C baseline (cbench),
# run interleaved on the same machine in one invocation, summarised as
# medians across rounds with Go/C ratios. See bench/README.md.
#
#   bash bench/compare.sh                      # default: 3 rounds, full sizes
#   ROUNDS=1 CBENCH_PINGS=2000 CBENCH_WARM=100 CBENCH_SECONDS=0.05 \
#     CBENCH_SPAWNS=10 GO_BENCHTIME=200x bash bench/compare.sh   # smoke run
#
# Environment:
#   ROUNDS          rounds (default 3); odd rounds run C first, even rounds Go first
#   CBENCH_*        passed through to "cbench all" (PINGS, WARM, SECONDS, SPAWNS, DIR)
#   GO_BENCHTIME    adds -benchtime=$GO_BENCHTIME to go test (default: go's 1s)
#   GO_BENCH_OUTPUT use this saved "go test -bench" output instead of running
#                   go test (to re-tabulate a run or to test the parser)
#   CC              C compiler (default gcc)
#
# Raw outputs and the table are kept in bench/bin/last-run/ (gitignored).
set -euo pipefail

ROUNDS=${ROUNDS:-3}
CC=${CC:-gcc}
if ! [[ $ROUNDS =~ ^[1-9][0-9]*$ ]]; then
	echo "compare.sh: ROUNDS must be a positive integer, got '$ROUNDS'" >&2
	exit 2
fi

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bin=bench/bin
out=$bin/last-run
mkdir -p "$bin"
rm -rf "$out"
mkdir -p "$out"

started=$(date +%s)
echo "compare.sh: building $bin/cbench" >&2
"$CC" -std=c11 -O2 -Wall -Wextra -o "$bin/cbench" bench/cbench.c

go_cmd=(go test -run='^$' -bench='^Benchmark(Ping|Echo)' -benchmem -count=1)
if [[ -n ${GO_BENCHTIME:-} ]]; then
	go_cmd+=(-benchtime="$GO_BENCHTIME")
fi
go_cmd+=(./ipc)

run_c() { # round
	echo "compare.sh: round $1/$ROUNDS: $bin/cbench all" >&2
	"$bin/cbench" all >"$out/c.$1.txt"
}

go_failures=0
run_go() { # round
	if [[ -n ${GO_BENCH_OUTPUT:-} ]]; then
		echo "compare.sh: round $1/$ROUNDS: Go results from $GO_BENCH_OUTPUT" >&2
		cp "$GO_BENCH_OUTPUT" "$out/go.$1.txt"
		return
	fi
	echo "compare.sh: round $1/$ROUNDS: ${go_cmd[*]}" >&2
	local rc=0
	"${go_cmd[@]}" >"$out/go.$1.txt" 2>&1 || rc=$?
	if ((rc != 0)); then
		go_failures=$((go_failures + 1))
		echo "compare.sh: warning: go test exited with status $rc in round $1 (output: $out/go.$1.txt); its missing metrics show as n/a" >&2
		tail -n 5 "$out/go.$1.txt" | sed 's/^/    /' >&2
	fi
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for ((r = 1; r <= ROUNDS; r++)); do
	if ((r % 2 == 1)); then
		run_c "$r"
		run_go "$r"
	else
		run_go "$r"
		run_c "$r"
	fi
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
wall=$(($(date +%s) - started))

# Normalise every raw output to "impl key value" lines (values in the C
# program's units: µs, round trips/s, MB/s with MB = 10^6 B).
normalise() {
	awk '
	# cbench: "name key=value ..."; "#" lines are comments.
	FILENAME ~ /\/c\.[0-9]+\.txt$/ {
		if ($0 ~ /^#/ || NF == 0) next
		delete kv
		for (i = 2; i <= NF; i++) {
			eq = index($i, "=")
			if (eq > 1) kv[substr($i, 1, eq - 1)] = substr($i, eq + 1)
		}
		if ($1 == "ping" || $1 == "ping_uds") {
			split("p50_us p99_us p999_us mean_us", ks, " ")
			for (j = 1; j <= 4; j++)
				if (ks[j] in kv) print "c", $1 "." ks[j], kv[ks[j]]
		} else if ($1 == "echo" && ("size" in kv)) {
			if ("round_trips_per_s" in kv) print "c", "echo." kv["size"] ".round_trips_per_s", kv["round_trips_per_s"]
			if ("mb_per_s" in kv) print "c", "echo." kv["size"] ".mb_per_s", kv["mb_per_s"]
		} else if ($1 == "spawn" && ("p50_us" in kv)) {
			print "c", "spawn.p50_us", kv["p50_us"]
		}
		next
	}
	# go test -bench: "BenchmarkName-P  iters  value unit  value unit ..."
	FILENAME ~ /\/go\.[0-9]+\.txt$/ && /^Benchmark/ && NF >= 4 {
		name = $1
		sub(/-[0-9]+$/, "", name) # the -GOMAXPROCS suffix
		delete m
		for (i = 3; i < NF; i += 2) m[$(i + 1)] = $i
		n = split(name, parts, "/")
		lname = tolower(name)
		# Allocation figures (-benchmem) have no C counterpart.
		for (u in m) if (u == "B/op" || u == "allocs/op") print "go", "other." name " " u, m[u]
		if (parts[1] == "BenchmarkPing") {
			key = ""
			if (n == 1 || lname ~ /socketpair|\/sp$|pair/) key = "ping"
			else if (lname ~ /uds|path|unix/) key = "ping_uds"
			if (key != "") {
				if ("p50-ns" in m) print "go", key ".p50_us", m["p50-ns"] / 1000
				if ("p99-ns" in m) print "go", key ".p99_us", m["p99-ns"] / 1000
				if ("p999-ns" in m) print "go", key ".p999_us", m["p999-ns"] / 1000
				if ("ns/op" in m) print "go", key ".mean_us", m["ns/op"] / 1000
				next
			}
		} else if (parts[1] == "BenchmarkEcho" && n >= 2) {
			s = parts[n]
			if (match(s, /^[0-9]+/)) {
				num = substr(s, 1, RLENGTH); unit = substr(s, RLENGTH + 1)
				mult = unit == "B" || unit == "" ? 1 : unit == "KiB" || unit == "K" ? 1024 : \
				       unit == "MiB" || unit == "M" ? 1048576 : unit == "KB" ? 1000 : unit == "MB" ? 1000000 : 0
				if (mult > 0 && lname !~ /uds|path/) {
					size = num * mult
					if (("ns/op" in m) && m["ns/op"] > 0) print "go", "echo." size ".round_trips_per_s", 1e9 / m["ns/op"]
					if ("MB/s" in m) print "go", "echo." size ".mb_per_s", m["MB/s"]
					next
				}
			}
		}
		# No C counterpart: keep every metric for the "other" section.
		for (u in m) if (u != "B/op" && u != "allocs/op") print "go", "other." name " " u, m[u]
	}
	' "$out"/c.*.txt "$out"/go.*.txt
}
normalise >"$out/values.txt"

cpu=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
params=$(grep -h -m1 '^# cbench all' "$out/c.1.txt" | sed 's/^# cbench all //' || true)
go_ver=$(go version 2>/dev/null) || go_ver="go version: failed"
gcc_ver=$("$CC" --version 2>/dev/null | head -1 || true)
go_cpu=$(grep -h -m1 '^cpu:' "$out"/go.*.txt 2>/dev/null | head -1 | sed 's/^cpu: *//' || true)

{
	echo "# pairvisor IPC: Go benchmarks vs C baseline (cbench)"
	echo
	echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "kernel: $(uname -r)"
	echo "cpu: ${cpu:-unknown}, $(nproc) CPUs${go_cpu:+ (go test: $go_cpu)}"
	echo "toolchains: $go_ver; $gcc_ver"
	echo "GOMAXPROCS: ${GOMAXPROCS:-default}"
	echo "rounds: $ROUNDS, interleaved (odd rounds C first, even rounds Go first); cells are median [min-max] across rounds"
	echo "cbench all: ${params:-?}"
	echo "go: ${GO_BENCH_OUTPUT:+(from $GO_BENCH_OUTPUT) }${go_cmd[*]}"
	echo "loadavg before: $load_before"
	echo "loadavg after: $load_after"
	echo "wall time: ${wall} s (build included)"
	if ! grep -q '^go ' "$out/values.txt"; then
		echo "WARNING: no BenchmarkPing/BenchmarkEcho results in the Go output (do they exist in ./ipc yet?); Go columns are n/a"
	fi
	if ((go_failures > 0)); then
		echo "WARNING: go test failed in $go_failures of $ROUNDS rounds; see $out/go.*.txt"
	fi
	echo
	awk -v rounds="$ROUNDS" '
	function fmt(v) {
		if (v == "") return "n/a"
		v += 0
		if (v == int(v)) return sprintf("%d", v)
		if (v >= 1000 || v <= -1000) return sprintf("%.0f", v)
		if (v >= 10 || v <= -10) return sprintf("%.1f", v)
		return sprintf("%.2f", v)
	}
	# median/min/max of the values stored for id; sets MED, MIN, MAX, CNT.
	function stats(id,    n, i, j, t, a) {
		n = cnt[id] + 0; CNT = n
		if (n == 0) { MED = MIN = MAX = ""; return }
		for (i = 1; i <= n; i++) a[i] = val[id, i] + 0
		for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
		MED = n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
		MIN = a[1]; MAX = a[n]
	}
	function cell(    s) {
		if (CNT == 0) return "n/a"
		s = fmt(MED)
		if (CNT > 1) s = s " [" fmt(MIN) "-" fmt(MAX) "]"
		if (CNT < rounds) s = s " (" CNT "/" rounds " rounds)"
		return s
	}
	function row(label, key, unit,    c, g, cm, gm, ratio) {
		stats("c" SUBSEP key); c = cell(); cm = MED
		stats("go" SUBSEP key); g = cell(); gm = MED
		ratio = (cm != "" && gm != "" && cm + 0 != 0) ? sprintf("%.2fx", gm / cm) : "n/a"
		printf "| %-34s | %-10s | %26s | %26s | %7s |\n", label, unit, c, g, ratio
	}
	function header(title, rlabel) {
		print "### " title
		print ""
		printf "| %-34s | %-10s | %26s | %26s | %7s |\n", "measurement", "unit", "C", "Go", rlabel
		printf "|%s|%s|%s|%s|%s|\n", "------------------------------------", "------------", \
		       "---------------------------:", "---------------------------:", "--------:"
	}
	{
		id = $1 SUBSEP $2
		# keys of "other" lines contain a space: impl, then "other.Name unit", then value
		if ($2 ~ /^other\./) { id = $1 SUBSEP $2 " " $3; okey[$2 " " $3] = 1; v = $4 } else v = $3
		val[id, ++cnt[id]] = v
	}
	END {
		header("Latency (lower is better; Go/C > 1 means Go is slower)", "Go/C")
		row("ping p50, socketpair", "ping.p50_us", "us")
		row("ping p99, socketpair", "ping.p99_us", "us")
		row("ping p99.9, socketpair", "ping.p999_us", "us")
		row("ping mean, socketpair (Go: ns/op)", "ping.mean_us", "us")
		row("ping p50, path UDS", "ping_uds.p50_us", "us")
		row("ping p99, path UDS", "ping_uds.p99_us", "us")
		row("ping p99.9, path UDS", "ping_uds.p999_us", "us")
		row("ping mean, path UDS (Go: ns/op)", "ping_uds.mean_us", "us")
		row("spawn to first pong, median", "spawn.p50_us", "us")
		print ""
		header("Echo throughput over a socketpair (higher is better; Go/C < 1 means Go is slower)", "Go/C")
		split("64 4096 65536 1048576", sizes, " ")
		split("64 B|4 KiB|64 KiB|1 MiB", names, "|")
		for (i = 1; i <= 4; i++) {
			row("echo " names[i] ", round trips/s", "echo." sizes[i] ".round_trips_per_s", "1/s")
			row("echo " names[i] ", payload one way", "echo." sizes[i] ".mb_per_s", "MB/s")
		}
		nother = 0
		for (k in okey) other[++nother] = k
		if (nother > 0) {
			for (i = 2; i <= nother; i++) { t = other[i]; for (j = i - 1; j >= 1 && other[j] > t; j--) other[j + 1] = other[j]; other[j + 1] = t }
			print ""
			print "### Other Go metrics, no C counterpart (median across rounds)"
			print ""
			for (i = 1; i <= nother; i++) {
				stats("go" SUBSEP other[i])
				printf "- %s: %s\n", substr(other[i], 7), cell()
			}
		}
	}
	' "$out/values.txt"
	echo
	echo "Notes: us = microseconds; MB = 10^6 bytes, payload one way. C: bench/cbench.c (fork + socketpair or"
	echo "path UDS, blocking read/write, one clock pair per round trip, nearest-rank percentiles). Go: ping"
	echo "p50/p99 from BenchmarkPing's p50-ns/p99-ns metrics, mean from its ns/op; echo MB/s from BenchmarkEcho's"
	echo "b.SetBytes, round trips/s = 1e9 / ns/op (one op = one round trip). n/a = no value (metric missing"
	echo "or no such Go benchmark). Ratios are of the medians; quote ratios, not absolute us (see RESULTS.md)."
	echo "Raw outputs: $out/"
} | tee "$out/table.md"

if ((go_failures > 0)); then
	exit 1
fi
