//go:build linux

package supervisor

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/pairvisor/pairvisor/internal/testutil"
)

// helperWait bounds a helper process's whole run: it starts a
// supervisor and waits for several events, each with its own deadline.
const helperWait = 3 * time.Minute

// runHelper runs this binary in a helper role (see helperRoles) that
// writes a JSON report to a file, waits for it to exit, and decodes the
// report into rep.
func runHelper(t *testing.T, roleName string, rep any, env ...string) {
	t.Helper()
	file := tempFile(t, "report.json")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(append(os.Environ(), role(t, roleName), envFile+"="+file), env...)
	var out testutil.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	select {
	case err := <-waited:
		if err != nil {
			t.Fatalf("helper %s: %v\n%s", roleName, err, logTail(out.String(), 100))
		}
	case <-time.After(helperWait):
		cmd.Process.Kill()
		<-waited
		t.Fatalf("helper %s did not finish within %v\n%s", roleName, helperWait, logTail(out.String(), 100))
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("helper %s wrote no report: %v\n%s", roleName, err, logTail(out.String(), 100))
	}
	if err := json.Unmarshal(b, rep); err != nil {
		t.Fatalf("helper %s report %q: %v", roleName, b, err)
	}
}

// writeReport writes rep as JSON into file; helpers report this way.
func writeReport(file string, rep any) error {
	b, err := json.Marshal(rep)
	if err != nil {
		return err
	}
	return writeFileAtomic(file, b)
}

// await polls cond until it holds, giving up after d; it reports
// whether cond held. For helper processes, which have no testing.T.
func await(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond) // polling, not synchronising
	}
	return true
}

// workerRecords returns the log records of worker id with message msg.
func (b *syncBuffer) workerRecords(id int, msg string) []map[string]any {
	var found []map[string]any
	for _, rec := range b.find(msg) {
		if rec["@module"] == "worker."+strconv.Itoa(id) || rec["@module"] == "supervisor.worker."+strconv.Itoa(id) {
			found = append(found, rec)
		}
	}
	return found
}

// procGone reports whether the process p named (by pid and start
// time) is gone entirely: neither running nor a zombie. A pid now
// taken by another process counts as gone.
func procGone(p procInfo) bool {
	now, ok := readProc(p.pid)
	return !ok || now.start != p.start
}

// waitProcGone waits until procGone(p), failing the test after d.
func waitProcGone(t *testing.T, what string, p procInfo, d time.Duration) {
	t.Helper()
	testutil.Poll(t, d, 5*time.Millisecond, what+" (pid "+strconv.Itoa(p.pid)+") gone, not even a zombie",
		func() bool { return procGone(p) },
		func() string {
			now, _ := readProc(p.pid)
			b, _ := os.ReadFile("/proc/" + strconv.Itoa(p.pid) + "/status")
			return string(bytes.TrimSpace(b)) + "\n" + strconv.Quote(string(now.state))
		})
}
