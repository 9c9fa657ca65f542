//go:build darwin || freebsd

package ipc

// filesSupported: descriptors are passed on Linux only. A Conn here
// never offers version 3, whatever ConnConfig.MaxFiles says.
const filesSupported = false

// recvFiles is never made here (see fds_linux.go).
type recvFiles struct {
	got   []int
	trunc bool
}

func newRecvFiles(int) *recvFiles { return nil }

func (rf *recvFiles) recv(fd int, p []byte, _ int) (int, error) { return readfd(fd, p) }
