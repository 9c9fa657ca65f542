//go:build linux

package supervisor

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/pairvisor/pairvisor/worker"
)

func init() {
	workerRoles["fd-report"] = fdReportRole
}

// fdReport lists the descriptors of a worker and of its child,
// as "number -> target".
type fdReport struct {
	Worker   []string `json:"worker"`
	Child    []string `json:"child"`
	ChildErr string   `json:"child_err"`
}

// fdReportRole reports the descriptors the worker holds right after
// FromEnv and those a child it starts through a shell holds, then
// serves.
func fdReportRole(w *worker.Worker, file string) int {
	var rep fdReport
	ents, _ := os.ReadDir("/proc/self/fd")
	for _, e := range ents {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil {
			rep.Worker = append(rep.Worker, e.Name()+" -> "+target)
		}
	}
	out, err := exec.Command("/bin/sh", "-c", `ls -l /proc/$$/fd`).Output()
	if err != nil {
		rep.ChildErr = err.Error()
	}
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) >= 3 && f[len(f)-2] == "->" {
			rep.Child = append(rep.Child, f[len(f)-3]+" -> "+f[len(f)-1])
		}
	}
	b, _ := json.Marshal(rep)
	if err := writeFileAtomic(file, b); err != nil {
		fmt.Fprintln(os.Stderr, "test worker:", err)
		return 1
	}
	return serve(context.Background(), w, worker.Config{})
}

// TestWorkersInheritOnlyTheContract: a descriptor the program holds
// without close-on-exec (one it inherited, say) reaches neither a
// worker nor the worker's children: workers get 0–2 and fd 3 only.
func TestWorkersInheritOnlyTheContract(t *testing.T) {
	t.Parallel()
	canary := filepath.Join(t.TempDir(), "canary")
	if err := os.WriteFile(canary, []byte("inherited by mistake"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(canary)
	if err != nil {
		t.Fatal(err)
	}
	// F_DUPFD, unlike os.Open, leaves the copy inheritable.
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD, 100)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)

	r, b := readyWorkerReport(t, "fd-report")
	var rep fdReport
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	if rep.ChildErr != "" {
		t.Fatalf("the worker's child: %s", rep.ChildErr)
	}
	for who, fds := range map[string][]string{"the worker": rep.Worker, "the worker's child": rep.Child} {
		for _, l := range fds {
			if strings.HasSuffix(l, canary) {
				t.Errorf("%s inherited the program's descriptor %d: %s (all: %q)", who, fd, l, fds)
			}
		}
	}
	channel := false
	for _, l := range rep.Worker {
		channel = channel || strings.HasPrefix(l, "3 -> socket:")
	}
	if !channel {
		t.Errorf("the worker has no channel on fd 3: %q", rep.Worker)
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
}
