package main

import (
	"bytes"
	"io"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// toJournal reports whether w is stderr connected to journald: systemd
// sets JOURNAL_STREAM to the device and inode of the stream it gave the
// service, and a stderr that is that very stream (not redirected since)
// goes to the journal.
func toJournal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok || f != os.Stderr {
		return false
	}
	dev, ino, ok := strings.Cut(os.Getenv("JOURNAL_STREAM"), ":")
	if !ok {
		return false
	}
	d, err1 := strconv.ParseUint(dev, 10, 64)
	i, err2 := strconv.ParseUint(ino, 10, 64)
	var st unix.Stat_t
	if err1 != nil || err2 != nil || unix.Fstat(int(f.Fd()), &st) != nil {
		return false
	}
	return uint64(st.Dev) == d && uint64(st.Ino) == i
}

// journalWriter prefixes every line of an hclog text entry with the
// syslog priority of its level ("<3>" for [ERROR]), the sd-daemon
// convention journald reads from a service's stdout and stderr.
type journalWriter struct{ w io.Writer }

// journalPriorities maps hclog's level tags to syslog priorities.
var journalPriorities = []struct{ tag, prio string }{
	{"[ERROR]", "<3>"}, {"[WARN]", "<4>"}, {"[INFO]", "<6>"}, {"[DEBUG]", "<7>"}, {"[TRACE]", "<7>"},
}

func (j *journalWriter) Write(p []byte) (int, error) {
	prio := "<6>"
	for _, jp := range journalPriorities {
		if bytes.HasPrefix(p, []byte(jp.tag)) {
			prio = jp.prio
			break
		}
	}
	// hclog writes each entry in one Write; a multi-line entry (a value
	// with newlines) gets the prefix on every line, or journald would
	// log the continuation lines at the default priority.
	var b bytes.Buffer
	for line := range bytes.Lines(p) {
		b.WriteString(prio)
		b.Write(line)
	}
	if _, err := j.w.Write(b.Bytes()); err != nil {
		return 0, err
	}
	return len(p), nil
}
