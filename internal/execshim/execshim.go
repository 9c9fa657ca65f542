// Package execshim gives a worker process LISTEN_PID, its own pid, as
// systemd socket activation requires (sd_listen_fds(3)): Go cannot set a
// child's environment between fork and exec, and the pid is not known
// before the fork.
//
// The supervisor starts a worker that has listeners through its own
// executable (see [Path]) with [EnvTarget] naming the real program.
// The init function of this package, which package supervisor imports
// and so every program that embeds a supervisor has, sees the variable
// and, before main and before the init functions of most packages,
// removes it, sets LISTEN_PID to getpid() (replacing any inherited
// value), and execve(2)s the target with the same arguments and the
// rest of the environment. The pid stays the same, so does every
// inherited descriptor (the listeners, the channel, 0–2; the shim opens
// none of its own), the process group and session, and the parent-death
// signal (kept across execve unless the target is set-user-ID or has
// file capabilities, exactly as without the shim).
//
// If the execve fails the shim writes one line to stderr and exits 126
// (permission denied, not executable) or 127 (anything else), as a
// shell does: it is the one process in which a library of pairvisor's
// exits, because it has nothing else to become. In every other process
// the package costs one getenv at start-up.
package execshim

import (
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/pairvisor/pairvisor/internal/contract"
)

// EnvTarget, when set, makes this process an exec shim for the program
// it names (an absolute path).
const EnvTarget = "PAIRVISOR_EXEC_SHIM"

func init() {
	target, ok := syscall.Getenv(EnvTarget)
	if !ok {
		return
	}
	os.Exit(run(target, os.Args))
}

// Env returns the environment entry that makes the shim exec target.
func Env(target string) string { return EnvTarget + "=" + target }

// run execs target with args and this process's environment, minus
// EnvTarget and any LISTEN_PID, plus LISTEN_PID=getpid(). It returns
// only on failure, with the exit status the process should end with.
func run(target string, args []string) int {
	env := shimEnv(syscall.Environ(), os.Getpid())
	err := syscall.Exec(target, args, env)
	os.Stderr.WriteString("pairvisor exec shim: exec " + strconv.Quote(target) + ": " + err.Error() + "\n")
	if err == syscall.EACCES || err == syscall.ENOEXEC || err == syscall.EPERM {
		return 126
	}
	return 127
}

// shimEnv returns env without EnvTarget and LISTEN_PID, then
// LISTEN_PID=pid.
func shimEnv(env []string, pid int) []string {
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if k == EnvTarget || k == contract.EnvListenPID {
			continue
		}
		out = append(out, kv)
	}
	return append(out, contract.EnvListenPID+"="+strconv.Itoa(pid))
}
