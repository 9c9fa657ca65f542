//go:build linux

package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
)

// TestJournalLogging: when stderr is the stream systemd named in
// JOURNAL_STREAM, log lines carry the syslog priority prefix of their
// level and no timestamp (journald adds its own); otherwise they are
// unchanged.
func TestJournalLogging(t *testing.T) {
	t.Parallel()
	runWith := func(journal bool) string {
		t.Helper()
		out, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
		if err != nil {
			t.Fatal(err)
		}
		defer out.Close()
		var st syscall.Stat_t
		if err := syscall.Fstat(int(out.Fd()), &st); err != nil {
			t.Fatal(err)
		}
		var env []string
		if journal {
			env = append(env, fmt.Sprintf("JOURNAL_STREAM=%d:%d", st.Dev, st.Ino))
		}
		cmd := cliCommand(t, cliOpts{env: env}, "run", "--workers", "1", "--duration", "300ms", "--echo-interval", "0", "--log-level", "debug")
		cmd.Stderr = out // the file itself, not a pipe: its device and inode are the stream's
		if err := cmd.Run(); err != nil {
			t.Fatalf("run: %v", err)
		}
		b, err := os.ReadFile(out.Name())
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	journal := runWith(true)
	prefixed := regexp.MustCompile(`^<([0-7])>\[(TRACE|DEBUG|INFO|WARN|ERROR)\] `)
	want := map[string]string{"TRACE": "7", "DEBUG": "7", "INFO": "6", "WARN": "4", "ERROR": "3"}
	levels := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(journal), "\n") {
		m := prefixed.FindStringSubmatch(line)
		if m == nil {
			t.Errorf("journal line without a priority prefix or with a timestamp: %q", line)
			continue
		}
		if want[m[2]] != m[1] {
			t.Errorf("level %s got priority <%s>, want <%s>: %q", m[2], m[1], want[m[2]], line)
		}
		levels[m[2]] = true
	}
	if !levels["INFO"] || !levels["DEBUG"] {
		t.Errorf("expected info and debug lines in:\n%s", journal)
	}
	plain := runWith(false)
	if !regexp.MustCompile(`(?m)^\d{4}-\d\d-\d\dT.* \[INFO\] `).MatchString(plain) || strings.Contains(plain, "<6>") {
		t.Errorf("without JOURNAL_STREAM the lines should be plain hclog text with timestamps:\n%s", plain)
	}
}

// TestJournalWriter: every line of a multi-line entry gets its level's
// priority.
func TestJournalWriter(t *testing.T) {
	t.Parallel()
	var b bytes.Buffer
	w := &journalWriter{w: &b}
	w.Write([]byte("[ERROR] supervisor: boom: detail=\n  | line two\n"))
	w.Write([]byte("[WARN]  supervisor: careful\n"))
	want := "<3>[ERROR] supervisor: boom: detail=\n<3>  | line two\n<4>[WARN]  supervisor: careful\n"
	if b.String() != want {
		t.Errorf("got %q, want %q", b.String(), want)
	}
}
