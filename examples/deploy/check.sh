#!/usr/bin/env bash
# Checks the files of examples/deploy with the real tools; .ci/run runs it
# (step "deploy examples"). Needs go, file, ldd, systemd-analyze,
# systemd-socket-activate and python3 with PyYAML. It installs nothing and
# leaves nothing outside a temporary directory. (The image itself is not
# built: that needs a Docker daemon. Its build and entrypoint commands are
# the ones run here.)
set -euo pipefail
cd "$(dirname "$0")/../.."
here=examples/deploy
tmp=$(mktemp -d)
bg=() # pids of the processes started here
cleanup() {
	for pid in "${bg[@]}"; do kill "$pid" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# run_until_ok TRIES CMD...: run CMD every 0.1 s until it exits 0.
run_until_ok() {
	local tries=$1; shift
	for ((i = 0; i < tries; i++)); do
		if "$@" >"$tmp/out" 2>&1; then return 0; fi
		sleep 0.1
	done
	cat "$tmp/out" >&2
	return 1
}

# stop_bg PID: SIGTERM, and the exit status must be 0.
stop_bg() {
	kill -TERM "$1"
	local st=0
	wait "$1" || st=$?
	[ "$st" -eq 0 ] || fail "process $1 exited $st after SIGTERM, want 0 (log: $(cat "$tmp/log" 2>/dev/null))"
}

echo "-- static binaries, built as the Dockerfile builds them"
grep -q '^ENV CGO_ENABLED=0$' $here/Dockerfile || fail "the Dockerfile no longer sets CGO_ENABLED=0"
for b in supervisor:./cmd/supervisor hasher:./examples/hasher; do
	name=${b%%:*} pkg=${b#*:}
	grep -qF "go build -trimpath -ldflags '-s -w' -o /out/usr/local/bin/$name $pkg" $here/Dockerfile ||
		fail "the Dockerfile no longer builds $name as this check does"
	CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$tmp/$name" "$pkg"
	file "$tmp/$name" | grep -q 'statically linked' || fail "file: $(file "$tmp/$name")"
	out=$(ldd "$tmp/$name" 2>&1 || true)
	grep -q 'not a dynamic executable' <<<"$out" || fail "ldd $name: $out"
	echo "   $name: $(file -b "$tmp/$name" | cut -d, -f1-4)"
done
# The example config, with the binaries where this check built them.
sed "s|/usr/local/bin/hasher|$tmp/hasher|" $here/pairvisor.toml >"$tmp/pairvisor.toml"
"$tmp/supervisor" check-config "$tmp/pairvisor.toml"

echo "-- systemd units: systemd-analyze verify"
mkdir "$tmp/units"
# verify wants ExecStart's binary to exist: a copy of the unit names the one built here.
sed "s|/usr/local/bin/supervisor|$tmp/supervisor|" $here/pairvisor.service >"$tmp/units/pairvisor.service"
cp $here/pairvisor.socket "$tmp/units/"
out=$(systemd-analyze verify "$tmp/units/pairvisor.socket" "$tmp/units/pairvisor.service" 2>&1) || fail "systemd-analyze verify: $out"
ver=$(systemd-analyze --version | awk 'NR == 1 { print $2 }')
if [ "$ver" -lt 253 ]; then
	# Type=notify-reload is systemd 253's; older ones warn and ignore it (see the unit).
	out=$(grep -v 'Failed to parse service type, ignoring: notify-reload' <<<"$out" || true)
	echo "   systemd $ver predates Type=notify-reload: its warning about it is expected"
fi
[ -z "$out" ] || fail "systemd-analyze verify: $out"

echo "-- the unit's ExecStart, socket-activated by systemd-socket-activate"
# The unit's command line with the paths moved here, and the group it
# serves (which this host need not have) replaced by root's.
exec_start=$(sed -n 's/^ExecStart=//p' $here/pairvisor.service)
listen=$(sed -n 's/^ListenStream=//p' $here/pairvisor.socket)
config=$(grep -o -- '--config [^ ]*' <<<"$exec_start" | cut -d' ' -f2)
sock="$tmp/pv.sock"
read -r -a cmd <<<"$exec_start"
for i in "${!cmd[@]}"; do
	case ${cmd[$i]} in
	/usr/local/bin/supervisor) cmd[$i]=$tmp/supervisor ;;
	"$listen") cmd[$i]=$sock ;;
	"$config") cmd[$i]=$tmp/pairvisor.toml ;;
	pairvisor) cmd[$i]=0 ;;
	esac
done
systemd-socket-activate -l "$sock" "${cmd[@]}" >/dev/null 2>"$tmp/log" &
bg+=($!)
run_until_ok 100 test -S "$sock" || fail "systemd-socket-activate did not bind $sock"
# The first connection starts the supervisor and is answered by it.
"$tmp/supervisor" ping --socket "$sock" --timeout 20s >/dev/null || fail "ping: $(cat "$tmp/log")"
run_until_ok 200 "$tmp/supervisor" ready --socket "$sock" --min 1 || fail "never ready: $(cat "$tmp/log")"
grep -q 'using the socket systemd passed' "$tmp/log" || fail "the passed socket was not used: $(cat "$tmp/log")"
stop_bg "${bg[-1]}"
[ -S "$sock" ] || fail "the supervisor removed the socket file systemd made"
echo "   ping and ready answered; SIGTERM exited 0 and left the socket file"

echo "-- k8s.yaml probes, against the Dockerfile's entrypoint"
subcommands=$("$tmp/supervisor" --help | awk '/^Commands:/ { on = 1; next } on && /^  [a-z]/ { print $1 } on && /^$/ { on = 0 }')
rm -f "$sock"
py=
for p in python3 /usr/bin/python3; do
	if "$p" -c 'import yaml' 2>/dev/null; then py=$p; break; fi
done
[ -n "$py" ] || fail "needs python3 with PyYAML (apt-get install python3-yaml)"
"$py" - "$here/Dockerfile" "$here/k8s.yaml" "$tmp" "$subcommands" <<'PY' >"$tmp/plan"
# Prints, NUL-separated, the entrypoint's command line and each probe's,
# with the image's paths moved into the temporary directory, after checking
# that the probes run real subcommands of supervisor.
import json, sys, yaml
dockerfile, manifest, tmp, subcommands = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split()
moves = {"/usr/local/bin/supervisor": tmp + "/supervisor", "supervisor": tmp + "/supervisor",
         "/etc/pairvisor/pairvisor.toml": tmp + "/pairvisor.toml", "/run/pairvisor/pv.sock": tmp + "/pv.sock"}
entry = [json.loads(l.split(None, 1)[1]) for l in open(dockerfile) if l.startswith("ENTRYPOINT ")]
assert len(entry) == 1, "one ENTRYPOINT, in exec form"
docs = [d for d in yaml.safe_load_all(open(manifest)) if d]
deps = [d for d in docs if d.get("kind") == "Deployment"]
assert len(deps) == 1, "k8s.yaml holds one Deployment"
lines = [entry[0]]
for c in deps[0]["spec"]["template"]["spec"]["containers"]:
    for kind in ("livenessProbe", "readinessProbe"):
        cmd = c[kind]["exec"]["command"]
        assert all(isinstance(a, str) for a in cmd), f"{kind}: every argument must be a string: {cmd}"
        assert cmd[0] == "supervisor", f"{kind} runs {cmd[0]!r}, not supervisor"
        assert cmd[1] in subcommands, f"{kind}: {cmd[1]!r} is not a supervisor subcommand ({' '.join(subcommands)})"
        print(f"   {c['name']} {kind}: {' '.join(cmd)}", file=sys.stderr)
        lines.append(cmd)
for cmd in lines:
    sys.stdout.write(" ".join(moves.get(a, a) for a in cmd) + "\0")
PY
mapfile -d '' plan <"$tmp/plan"
read -r -a cmd <<<"${plan[0]}"
"${cmd[@]}" >/dev/null 2>"$tmp/log" &
bg+=($!)
for probe in "${plan[@]:1}"; do
	read -r -a cmd <<<"$probe"
	run_until_ok 200 "${cmd[@]}" || fail "probe never passed: ${cmd[*]}: $(cat "$tmp/log")"
done
stop_bg "${bg[-1]}"
echo "   the entrypoint ran; both probes passed; SIGTERM exited 0"
echo "deploy examples: ok"
