//go:build linux

package ipc

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// filesSupported: descriptors can be passed on this system (SCM_RIGHTS,
// received close-on-exec with MSG_CMSG_CLOEXEC).
const filesSupported = true

// recvFiles is the receive side of a sock that takes file descriptors
// (ConnConfig.MaxFiles > 0): every read is a recvmsg(2) with room for
// MaxFiles descriptors, because read(2) would discard (close) any that
// arrive. It belongs to the holder of the read side, like the rest of
// the sock's reading state; what a read brought is left in got and
// trunc for reader.read to take (see reader.arrived in fds.go).
type recvFiles struct {
	msg unix.Msghdr
	iov unix.Iovec
	oob []byte // the control buffer: exactly MaxFiles descriptors

	got   []int // descriptors the last read brought, close-on-exec
	trunc bool  // the last read's control data was cut (MSG_CTRUNC)
}

func newRecvFiles(maxFiles int) *recvFiles {
	rf := &recvFiles{oob: make([]byte, unix.CmsgSpace(maxFiles*4))}
	rf.msg.Iov = &rf.iov
	rf.msg.Iovlen = 1
	return rf
}

// recv is one recvmsg(2) into p, with flags besides MSG_CMSG_CLOEXEC
// (MSG_DONTWAIT for a read that must not wait), retried on EINTR. The
// descriptors it brings are close-on-exec from the moment they exist
// in this process, so no fork in between can inherit them. It does not
// allocate unless descriptors arrive.
func (rf *recvFiles) recv(fd int, p []byte, flags int) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	rf.iov.Base = unsafe.SliceData(p)
	rf.iov.SetLen(len(p))
	rf.msg.Control = &rf.oob[0]
	rf.msg.SetControllen(len(rf.oob))
	rf.msg.Flags = 0
	n, err := retry(unix.SYS_RECVMSG, uintptr(fd), uintptr(unsafe.Pointer(&rf.msg)), uintptr(flags|unix.MSG_CMSG_CLOEXEC), 0)
	rf.iov.Base = nil // keep no reference to p
	if err != nil {
		return 0, err
	}
	if rf.msg.Controllen > 0 {
		rf.parse(rf.oob[:rf.msg.Controllen])
	}
	if rf.msg.Flags&unix.MSG_CTRUNC != 0 {
		rf.trunc = true
	}
	return n, nil
}

// parse appends the descriptors of every SCM_RIGHTS message in oob
// (what the kernel wrote) to got. Other control messages (there should
// be none: we ask for no credentials) are passed over.
func (rf *recvFiles) parse(oob []byte) {
	hdr := unix.CmsgLen(0) // the aligned header
	for len(oob) >= hdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < hdr || l > len(oob) {
			return
		}
		if h.Level == unix.SOL_SOCKET && h.Type == unix.SCM_RIGHTS {
			for i := hdr; i+4 <= l; i += 4 {
				rf.got = append(rf.got, int(*(*int32)(unsafe.Pointer(&oob[i]))))
			}
		}
		next := unix.CmsgSpace(l - hdr)
		if next >= len(oob) {
			return
		}
		oob = oob[next:]
	}
}
