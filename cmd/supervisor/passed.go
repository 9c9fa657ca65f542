package main

import (
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/pairvisor/pairvisor/internal/contract"
)

// passedFiles returns the sockets a service manager passed us by
// systemd's socket-activation protocol: LISTEN_PID is our pid, and
// LISTEN_FDS descriptors from fd 3 on, named by LISTEN_FDNAMES (a name
// missing or empty becomes "LISTEN_FD_<n>"). Each is made close-on-exec.
// The variables are removed from our environment whatever they say, so
// that neither they nor the descriptors reach a child.
//
// (github.com/coreos/go-systemd/v22/activation does the same, but links
// crypto/tls into this binary, which every worker re-executes.)
func passedFiles() []*os.File {
	pid, pidErr := strconv.Atoi(os.Getenv(contract.EnvListenPID))
	n, nErr := strconv.Atoi(os.Getenv(contract.EnvListenFDs))
	names := strings.Split(os.Getenv(contract.EnvListenFDNames), ":")
	os.Unsetenv(contract.EnvListenPID)
	os.Unsetenv(contract.EnvListenFDs)
	os.Unsetenv(contract.EnvListenFDNames)
	if pidErr != nil || nErr != nil || pid != os.Getpid() || n <= 0 {
		return nil
	}
	files := make([]*os.File, 0, n)
	for i := range n {
		fd := contract.ListenFDStart + i
		syscall.CloseOnExec(fd)
		name := "LISTEN_FD_" + strconv.Itoa(fd)
		if i < len(names) && names[i] != "" {
			name = names[i]
		}
		files = append(files, os.NewFile(uintptr(fd), name))
	}
	return files
}
