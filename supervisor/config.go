package supervisor

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/pairvisor/pairvisor/internal/sdnotify"
	"github.com/pairvisor/pairvisor/ipc"
)

// Defaults for the zero fields of [Config].
const (
	DefaultWorkers        = 1
	DefaultPingInterval   = time.Second
	DefaultPingTimeout    = time.Second
	DefaultPingMisses     = 3
	DefaultStartTimeout   = 10 * time.Second
	DefaultStopTimeout    = 5 * time.Second
	DefaultBackoffMin     = 100 * time.Millisecond
	DefaultBackoffMax     = 30 * time.Second
	DefaultHealthyAfter   = 10 * time.Second
	DefaultRestartWindow  = time.Minute
	DefaultReadyAfter     = time.Second
	DefaultHealthInterval = 10 * time.Second
	DefaultHealthTimeout  = 5 * time.Second
	DefaultHealthMisses   = 3
)

// RestartPolicy says when a worker that ended is started again.
type RestartPolicy int

const (
	// RestartOnFailure restarts a worker that exits nonzero, is killed
	// by a signal, never says hello, or is declared hung, but not one
	// that exits 0. It is the default.
	RestartOnFailure RestartPolicy = iota
	// RestartAlways restarts a worker whatever the reason it ended.
	RestartAlways
	// RestartNever leaves an ended worker ended.
	RestartNever
)

var policyNames = map[RestartPolicy]string{RestartOnFailure: "on-failure", RestartAlways: "always", RestartNever: "never"}

func (p RestartPolicy) String() string { return policyNames[p] }

// ParseRestartPolicy parses "always", "on-failure" or "never".
func ParseRestartPolicy(s string) (RestartPolicy, error) {
	for p, n := range policyNames {
		if n == s {
			return p, nil
		}
	}
	return 0, fmt.Errorf("supervisor: unknown restart policy %q (want always, on-failure or never)", s)
}

// ReadyMode says how a worker shows that it is ready.
type ReadyMode uint8

// Ready modes.
const (
	// ReadyHello: a worker speaking the protocol is ready at its hello
	// on fd 3 and health-checked with pings.
	ReadyHello ReadyMode = iota
	// ReadyNotify: a worker is ready when it sends "READY=1" to the
	// NOTIFY_SOCKET the supervisor gives it (the sd_notify protocol of
	// systemd's Type=notify); see docs/PROTOCOL.md, "Readiness".
	// Linux only: elsewhere New fails with ErrUnsupported.
	ReadyNotify
	// ReadyStarted: a worker is ready once it has stayed alive
	// ReadyAfter; its health is its liveness (plus HealthCmd).
	ReadyStarted
)

var readyNames = [...]string{"hello", "notify", "started"}

// String returns the mode's name, as ParseReadyMode takes it.
func (m ReadyMode) String() string {
	if int(m) < len(readyNames) {
		return readyNames[m]
	}
	return fmt.Sprintf("ReadyMode(%d)", m)
}

// ParseReadyMode parses "hello", "notify" or "started".
func ParseReadyMode(s string) (ReadyMode, error) {
	for i, n := range readyNames {
		if n == s {
			return ReadyMode(i), nil
		}
	}
	return 0, fmt.Errorf("supervisor: unknown ready mode %q (want hello, notify or started)", s)
}

// Config configures a [Supervisor]. A zero field means its default; New
// rejects a negative duration or count, a BackoffMax below BackoffMin,
// and unknown modes with an error wrapping ErrConfig.
type Config struct {
	// Workers is the number of workers to keep running (default 1).
	Workers int

	// Name names the program the workers run: each worker logs under
	// "NAME.N" and Status carries it (default "worker").
	Name string

	// Executable is the program to start as each worker: a path, or a
	// bare name looked up in PATH as a shell does (exec.LookPath); New
	// fails with ErrExecutable if it is missing or not executable.
	// Empty means this process's own executable (os.Executable),
	// re-executed: the
	// program calls worker.FromEnv early in main to tell the two roles
	// apart.
	Executable string

	// Args are the worker's arguments, not counting argv[0]. In Args,
	// in Env's values and in HealthCmd, "%i" stands for the worker's
	// slot number (1 … Workers) and "%%" for a literal "%", as in a
	// systemd template unit, so that copies can differ (ports, data
	// directories); any other "%" is left as it is.
	Args []string

	// Env is added to the supervisor's environment for each worker,
	// after the PAIRVISOR_ contract variables are stripped from it.
	Env []string

	// Ready is how a worker shows that it is ready (default
	// [ReadyHello]): only ready workers are sent requests and
	// health-checked, and StartTimeout bounds the wait.
	Ready ReadyMode
	// ReadyAfter is, for [ReadyStarted], how long a worker must stay
	// alive to count as ready (default 1s), like supervisord's
	// startsecs. StartTimeout does not apply then.
	ReadyAfter time.Duration
	// Watchdog is, for [ReadyNotify], the interval passed to each worker
	// as WATCHDOG_USEC: a ready worker that sends no "WATCHDOG=1" for
	// that long, or sends "WATCHDOG=trigger", is hung, killed and
	// restarted, as under systemd's WatchdogSec. Zero: no watchdog.
	Watchdog time.Duration

	// HealthCmd, if set, is a command (argv, "%i" expanded) run for
	// every ready worker each HealthInterval (default 10s), whatever the
	// Ready mode: a nonzero exit, or no exit within HealthTimeout
	// (default 5s; the command's process group is then killed), is a
	// miss, and HealthMisses misses in a row (default 3) declare the
	// worker hung. Its output goes to the worker's log, at most 4 KiB
	// of it per run. It runs as the worker does (Credential), in the
	// supervisor's environment plus the worker's Env ("%i" expanded)
	// and PAIRVISOR_PROBE_WORKER (the slot number) and
	// PAIRVISOR_PROBE_PID (the worker's pid); PATH is searched for
	// HealthCmd[0].
	HealthCmd      []string
	HealthInterval time.Duration
	HealthTimeout  time.Duration
	HealthMisses   int

	// StopSignal is the signal that asks a worker to stop (default
	// SIGTERM): sent at half of StopTimeout to a worker that has a
	// channel (after the shutdown message), at once to one that has
	// none (a program that does not speak the protocol).
	StopSignal syscall.Signal

	// Dir is the workers' working directory; empty means ours.
	Dir string

	// Credential, if set, is the user, group and supplementary groups
	// that the workers and HealthCmd run as; nil means ours. Giving
	// another one takes root: New fails with ErrConfig otherwise. The
	// supervisor looks no account up and sets no variable: the caller
	// puts HOME, USER and the like in Env if the program needs them.
	// The executable must be one that user may run; sockets passed as
	// Listeners are bound by us, so a port below 1024 needs no
	// privilege of the workers'.
	Credential *syscall.Credential

	// Listeners are passed to every worker in the systemd
	// socket-activation layout (see [Listener]; at most MaxListeners):
	// fds 3 … 3+n−1 in this order, LISTEN_FDS, LISTEN_FDNAMES and
	// LISTEN_PID (the worker's own pid, set by an exec shim: each such
	// worker is started through this program's own executable, which
	// execs the real one; see docs/LISTENERS.md), and the channel on fd
	// 3+n, as PAIRVISOR_FD says. Env may then not set any LISTEN_
	// variable. The caller binds the sockets and owns the files: New
	// takes a duplicate of each, which the Supervisor keeps until Run
	// returns, so the caller may close its own at once after New.
	// Because the sockets outlive the workers, a rolling restart
	// (Reload) loses no connection: the kernel queues connections
	// between one worker's last accept and the next one's first.
	Listeners []Listener

	// PingInterval is the time between health pings (default 1s).
	PingInterval time.Duration
	// PingTimeout bounds each ping from the moment it is written
	// (default 1s). A ping unanswered by then is a miss only if nothing
	// at all arrived from the worker meanwhile: a worker busy sending
	// (a pong queued behind large replies) is making progress, not hung.
	PingTimeout time.Duration
	// PingMisses consecutive failed pings declare a worker hung; it is
	// then killed and restarted under the policy (default 3).
	PingMisses int

	// StartTimeout bounds the time from spawn to the worker's
	// readiness, its hello or its "READY=1" (default 10s); a worker not
	// ready by then is killed. A worker is "starting" until ready: it is
	// neither sent requests nor health-checked before then.
	StartTimeout time.Duration

	// StopTimeout bounds a graceful stop: the shutdown message at once,
	// StopSignal to the worker's process group at half the timeout (at
	// once to a worker without a channel), SIGKILL at the end
	// (default 5s).
	StopTimeout time.Duration

	// Restart is the restart policy (default [RestartOnFailure]).
	Restart RestartPolicy
	// BackoffMin and BackoffMax bound the jittered exponential delay
	// before a restart (defaults 100ms and 30s).
	BackoffMin, BackoffMax time.Duration
	// HealthyAfter is how long a worker must stay ready before its
	// backoff resets, like supervisord's startsecs (default 10s).
	HealthyAfter time.Duration
	// MaxRestarts restarts within RestartWindow (default 1m) make Run
	// stop every worker and return [ErrCrashLoop]. Zero means no limit.
	// Only worker failures count: not an attempt that the supervisor's
	// own shortage of descriptors or memory defeated, nor an exit that
	// is part of a stop.
	MaxRestarts   int
	RestartWindow time.Duration

	// Handler answers application messages that workers send to the
	// supervisor. Nil refuses them.
	Handler ipc.Handler

	// Logger receives the supervisor's log lines and, under
	// "worker.N", each worker's stderr and stdout: a worker's hclog
	// JSON fields under keys prefixed "w.", every string it wrote
	// quoted if it holds control characters, and at most about 1,000
	// lines and 1 MiB a second per worker (bursts of 10,000 lines and
	// 4 MiB); the excess is dropped and counted in a warning. Nil
	// discards everything.
	Logger hclog.Logger

	// now and at are the loop's clock; tests replace them with a fake
	// one. at returns a channel that receives once the clock reaches t
	// (at once if it has), so that a deadline armed late is still
	// kept.
	now func() time.Time
	at  func(t time.Time) <-chan time.Time
	// stopGrace is how long a worker ended by a stop signal the
	// supervisor did not send waits for Run's context to end before it
	// counts as a failure (stopSignalGrace); tests may change it.
	stopGrace time.Duration
}

// stopSignalGrace: see Supervisor.curEnded.
const stopSignalGrace = time.Second

// withDefaults returns a copy of c with every zero field set.
func (c Config) withDefaults() (Config, error) {
	if c.Workers < 0 {
		return c, fmt.Errorf("%w: Workers is %d, want at least 1", ErrConfig, c.Workers)
	}
	if c.Workers == 0 {
		c.Workers = DefaultWorkers
	}
	if c.Executable == "" {
		exe, err := os.Executable()
		if err != nil {
			return c, fmt.Errorf("supervisor: finding own executable: %w", err)
		}
		c.Executable = exe
	} else {
		exe, err := exec.LookPath(c.Executable)
		if err != nil {
			return c, fmt.Errorf("%w: %w", ErrExecutable, err)
		}
		if !filepath.IsAbs(exe) {
			if exe, err = filepath.Abs(exe); err != nil {
				return c, fmt.Errorf("%w: %w", ErrExecutable, err)
			}
		}
		c.Executable = exe
	}
	if c.Name == "" {
		c.Name = "worker"
	}
	if c.Ready > ReadyStarted {
		return c, fmt.Errorf("%w: unknown Ready mode %d", ErrConfig, c.Ready)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"PingInterval", c.PingInterval}, {"PingTimeout", c.PingTimeout}, {"StartTimeout", c.StartTimeout},
		{"StopTimeout", c.StopTimeout}, {"BackoffMin", c.BackoffMin}, {"BackoffMax", c.BackoffMax},
		{"HealthyAfter", c.HealthyAfter}, {"RestartWindow", c.RestartWindow}, {"ReadyAfter", c.ReadyAfter},
		{"Watchdog", c.Watchdog}, {"HealthInterval", c.HealthInterval}, {"HealthTimeout", c.HealthTimeout},
	} {
		if d.v < 0 {
			return c, fmt.Errorf("%w: %s is %v, want a positive duration or zero for the default", ErrConfig, d.name, d.v)
		}
	}
	for _, n := range []struct {
		name string
		v    int
	}{{"PingMisses", c.PingMisses}, {"MaxRestarts", c.MaxRestarts}, {"HealthMisses", c.HealthMisses}} {
		if n.v < 0 {
			return c, fmt.Errorf("%w: %s is %d, want a positive number or zero for the default", ErrConfig, n.name, n.v)
		}
	}
	if c.BackoffMin > 0 && c.BackoffMax > 0 && c.BackoffMax < c.BackoffMin {
		return c, fmt.Errorf("%w: BackoffMax %v is less than BackoffMin %v", ErrConfig, c.BackoffMax, c.BackoffMin)
	}
	if c.Restart > RestartNever {
		return c, fmt.Errorf("%w: unknown restart policy %d", ErrConfig, c.Restart)
	}
	if c.StopSignal < 0 || c.StopSignal > 64 {
		return c, fmt.Errorf("%w: StopSignal %d is not a signal", ErrConfig, c.StopSignal)
	}
	if err := c.checkCredential(os.Geteuid(), os.Getegid()); err != nil {
		return c, err
	}
	if c.Ready == ReadyNotify {
		if err := sdnotify.Supported(); err != nil {
			return c, fmt.Errorf("%w: Ready: ReadyNotify: %w", ErrUnsupported, err)
		}
	}
	if c.Watchdog > 0 && c.Ready != ReadyNotify {
		return c, fmt.Errorf("%w: Watchdog needs Ready: ReadyNotify (the worker feeds it with WATCHDOG=1)", ErrConfig)
	}
	if err := checkListeners(c.Listeners, c.Env); err != nil {
		return c, err
	}
	c.Listeners = append([]Listener(nil), c.Listeners...)
	if len(c.HealthCmd) > 0 {
		if c.HealthCmd[0] == "" {
			return c, fmt.Errorf("%w: HealthCmd has an empty command name", ErrConfig)
		}
		c.HealthCmd = append([]string(nil), c.HealthCmd...)
	}
	def0 := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def0(&c.ReadyAfter, DefaultReadyAfter)
	def0(&c.HealthInterval, DefaultHealthInterval)
	def0(&c.HealthTimeout, DefaultHealthTimeout)
	if c.HealthMisses <= 0 {
		c.HealthMisses = DefaultHealthMisses
	}
	if c.StopSignal == 0 {
		c.StopSignal = syscall.SIGTERM
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.PingInterval, DefaultPingInterval)
	def(&c.PingTimeout, DefaultPingTimeout)
	def(&c.StartTimeout, DefaultStartTimeout)
	def(&c.StopTimeout, DefaultStopTimeout)
	def(&c.BackoffMin, DefaultBackoffMin)
	def(&c.BackoffMax, DefaultBackoffMax)
	def(&c.HealthyAfter, DefaultHealthyAfter)
	def(&c.RestartWindow, DefaultRestartWindow)
	if c.PingMisses <= 0 {
		c.PingMisses = DefaultPingMisses
	}
	if c.BackoffMax < c.BackoffMin {
		c.BackoffMax = c.BackoffMin
	}
	if c.Logger == nil {
		c.Logger = hclog.NewNullLogger()
	}
	c.Args = append([]string(nil), c.Args...)
	c.Env = append([]string(nil), c.Env...)
	if c.now == nil {
		c.now = time.Now
	}
	if c.at == nil {
		c.at = func(t time.Time) <-chan time.Time { return time.After(time.Until(t)) }
	}
	if c.stopGrace <= 0 {
		c.stopGrace = stopSignalGrace
	}
	return c, nil
}

// checkCredential validates Credential for a supervisor running as euid
// and egid, and makes it the caller's no more: c gets its own copy. An
// unprivileged supervisor may only name itself, which then changes
// nothing and so is dropped (setgroups would fail).
func (c *Config) checkCredential(euid, egid int) error {
	if c.Credential == nil {
		return nil
	}
	cred := *c.Credential
	cred.Groups = append([]uint32(nil), cred.Groups...)
	c.Credential = &cred
	if euid == 0 {
		return nil
	}
	if int(cred.Uid) == euid && int(cred.Gid) == egid && len(cred.Groups) == 0 {
		c.Credential = nil
		return nil
	}
	return fmt.Errorf("%w: Credential: running workers as uid %d, gid %d takes root, and this process runs as uid %d",
		ErrConfig, cred.Uid, cred.Gid, euid)
}

// workerUID is the uid the workers run as.
func (c *Config) workerUID() uint32 {
	if c.Credential != nil {
		return c.Credential.Uid
	}
	return uint32(os.Geteuid())
}
