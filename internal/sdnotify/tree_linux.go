//go:build linux

package sdnotify

import (
	"bytes"
	"strconv"

	"golang.org/x/sys/unix"
)

// maxTreeDepth bounds FromTree's walk up the parent links. Process
// trees deeper than this under one worker are not expected; a walk
// that reaches the bound answers false.
const maxTreeDepth = 128

// FromTree reports whether pid is root or a descendant of root, walking
// the parent links of /proc/<pid>/stat up to 128 (maxTreeDepth) steps. It
// reports false if pid, or an ancestor on the way, is gone (including
// when root itself is gone), and for pids that are not positive.
//
// It describes the processes as they are now: a process whose parent
// exited was re-parented (to init, or to a subreaper such as the
// supervisor) and is no longer in root's tree, and a pid that was
// reused names another process. See the package doc for what to do
// with senders that are gone.
func FromTree(pid int32, root int) bool {
	if pid <= 0 || root <= 0 {
		return false
	}
	p := int(pid)
	for range maxTreeDepth {
		ppid, ok := parentOf(p)
		if !ok {
			return false
		}
		if p == root {
			return true
		}
		if ppid <= 0 {
			return false
		}
		p = ppid
	}
	return false
}

// parentOf returns the parent pid of process pid from /proc/<pid>/stat,
// "pid (comm) state ppid ...", and false if the process is gone or the
// file does not parse. comm may hold spaces and ')', so the fields are
// read after the last ')'; the first 512 bytes hold them (comm is 16
// bytes, TASK_COMM_LEN, or 64 for some kernel threads).
func parentOf(pid int) (int, bool) {
	fd, err := unix.Open("/proc/"+strconv.Itoa(pid)+"/stat", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, false
	}
	var buf [512]byte
	n, err := readRetry(fd, buf[:])
	unix.Close(fd)
	if err != nil || n <= 0 {
		return 0, false
	}
	b := buf[:n]
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, false
	}
	// After ')': " S ppid ...".
	f := bytes.Fields(b[i+1:])
	if len(f) < 2 {
		return 0, false
	}
	ppid, err := strconv.Atoi(string(f[1]))
	if err != nil {
		return 0, false
	}
	return ppid, true
}

// readRetry is read(2), retried on EINTR.
func readRetry(fd int, p []byte) (int, error) {
	for {
		n, err := unix.Read(fd, p)
		if err != unix.EINTR {
			return n, err
		}
	}
}
