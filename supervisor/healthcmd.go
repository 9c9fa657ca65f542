package supervisor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// healthOutputMax bounds what a health command's run may put in the
// log: its first 4 KiB of stdout and stderr together.
const healthOutputMax = 4 << 10

// runHealthCommand runs Config.HealthCmd for worker id (pid) and returns
// nil if it exited 0 within HealthTimeout. The command runs in its own
// process group, killed whole on timeout or when ctx (the worker's
// life) ends; its output is logged, bounded, at debug level if it
// passed and warn if not.
func (s *Supervisor) runHealthCommand(ctx context.Context, id, pid int, log hclog.Logger) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.HealthTimeout)
	defer cancel()
	argv := expandAll(s.cfg.HealthCmd, id, false)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(append(withoutContract(os.Environ()), expandAll(s.cfg.Env, id, true)...),
		"PAIRVISOR_PROBE_WORKER="+strconv.Itoa(id),
		"PAIRVISOR_PROBE_PID="+strconv.Itoa(pid))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: s.cfg.Credential}
	cmd.Cancel = func() error { return unix.Kill(-cmd.Process.Pid, unix.SIGKILL) }
	cmd.WaitDelay = time.Second // a descendant holding the output pipe
	out := &cappedBuffer{max: healthOutputMax}
	cmd.Stdout, cmd.Stderr = out, out
	err := cmd.Run()
	if err == nil {
		// A background job of the command may outlive it in its group.
		unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
	}
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		err = fmt.Errorf("no exit within %v: killed", s.cfg.HealthTimeout)
	case err != nil && ctx.Err() != nil:
		return ctx.Err() // the worker ended meanwhile
	}
	text := out.String()
	switch {
	case err != nil:
		log.Warn("health command output", "command", argv[0], "error", err, "output", text, "truncated", out.cut)
	case text != "":
		log.Debug("health command output", "command", argv[0], "output", text, "truncated", out.cut)
	}
	return err
}

// cappedBuffer keeps the first max bytes written to it and counts the
// rest; it never fails a write, so the command is never blocked on it.
type cappedBuffer struct {
	buf bytes.Buffer
	max int
	cut int
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	room := b.max - b.buf.Len()
	if room < len(p) {
		b.cut += len(p) - max(room, 0)
		if room > 0 {
			b.buf.Write(p[:room])
		}
		return len(p), nil
	}
	return b.buf.Write(p)
}

// String returns the output kept, trimmed, with control characters
// (but newlines and tabs) quoted, so it cannot forge log lines.
func (b *cappedBuffer) String() string {
	s := strings.TrimSpace(b.buf.String())
	if strings.IndexFunc(s, func(r rune) bool { return r < 0x20 && r != '\n' && r != '\t' || r == 0x7f }) >= 0 {
		return strconv.Quote(s)
	}
	return s
}

// withoutContract returns env without any PAIRVISOR_ variable and
// without the variables by which systemd speaks to the supervisor
// itself (NOTIFY_SOCKET, WATCHDOG_*, LISTEN_*): they are the
// supervisor's, and a worker that inherited them could speak for it.
func withoutContract(env []string) []string {
	out := make([]string, 0, len(env)+4)
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(name, "PAIRVISOR_"), name == "NOTIFY_SOCKET", name == "WATCHDOG_USEC",
			name == "WATCHDOG_PID", name == "MANAGERPID", name == "LISTEN_FDS", name == "LISTEN_PID", name == "LISTEN_FDNAMES":
		default:
			out = append(out, kv)
		}
	}
	return out
}
