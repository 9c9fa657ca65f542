//go:build linux

package sdnotify

import (
	"errors"
	"os"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// These tests reach what a real sender cannot produce: the kernel
// attaches credentials to every datagram once SO_PASSCRED is set, and
// always with a pid we can see or 0. examine is given the ancillary
// bytes directly.

// credMsg returns an SCM_CREDENTIALS control message.
func credMsg(pid int32, uid, gid uint32) []byte {
	return unix.UnixCredentials(&unix.Ucred{Pid: pid, Uid: uid, Gid: gid})
}

// fakeSocket is a Socket with buffers and an effective uid, and no
// descriptor: enough for examine.
func fakeSocket(euid uint32) *Socket {
	return &Socket{euid: euid, worker: workerUID, buf: make([]byte, MaxDatagram), oob: make([]byte, oobSize)}
}

// workerUID is the uid fakeSocket's worker runs as.
const workerUID = 2000

func TestExamineCredentials(t *testing.T) {
	const body = "READY=1"
	for _, tc := range []struct {
		name string
		euid uint32
		oob  []byte
		want error // nil: accepted
	}{
		{"none", 1000, nil, ErrNoCredentials},
		{"pid 0", 1000, credMsg(0, 1000, 1000), ErrNoCredentials},
		{"negative pid", 1000, credMsg(-5, 1000, 1000), ErrNoCredentials},
		{"our uid", 1000, credMsg(42, 1000, 7), nil},
		{"root", 1000, credMsg(42, 0, 0), nil},
		{"other uid", 1000, credMsg(42, 1001, 1000), ErrForeignUser},
		{"worker's uid", 1000, credMsg(42, workerUID, 1000), nil},
		{"overflow uid", 0, credMsg(42, 65534, 65534), ErrForeignUser},
		{"short credentials", 1000, shortCred(), ErrNoCredentials},
		{"garbage header", 1000, append(credMsg(42, 1000, 1000), make([]byte, unix.SizeofCmsghdr)...), nil},
		{"other level", 1000, otherLevel(), ErrNoCredentials},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := fakeSocket(tc.euid)
			n := copy(s.buf, body)
			oobn := copy(s.oob, tc.oob)
			m, err := s.examine(n, oobn, 0)
			if tc.want == nil {
				if err != nil || !m.Ready || m.Sender.PID != 42 {
					t.Fatalf("examine = %+v, %v; want READY=1 from pid 42", m, err)
				}
				return
			}
			var re *RefusedError
			if !errors.As(err, &re) || !errors.Is(err, tc.want) || !errors.Is(err, ErrRefused) {
				t.Fatalf("examine = %+v, %v; want a refusal for %v", m, err, tc.want)
			}
			if re.Size != len(body) {
				t.Errorf("refusal %+v: size %d, want %d", re, re.Size, len(body))
			}
		})
	}
}

// shortCred is an SCM_CREDENTIALS message with 8 bytes of data instead
// of 12.
func shortCred() []byte {
	b := make([]byte, unix.CmsgSpace(8))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = unix.SOL_SOCKET, unix.SCM_CREDENTIALS
	h.SetLen(unix.CmsgLen(8))
	return b
}

// otherLevel is credentials at a level other than SOL_SOCKET.
func otherLevel() []byte {
	b := credMsg(42, 1000, 1000)
	(*unix.Cmsghdr)(unsafe.Pointer(&b[0])).Level = unix.SOL_IP
	return b
}

// TestSocketOptions checks the descriptor Listen makes: a datagram
// socket, close-on-exec, non-blocking, asking for credentials.
func TestSocketOptions(t *testing.T) {
	s, err := Listen(uint32(os.Geteuid()))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var fdFlags, flFlags, typ, passcred int
	var cerr error
	err = s.rc.Control(func(fd uintptr) {
		if fdFlags, cerr = unix.FcntlInt(fd, unix.F_GETFD, 0); cerr != nil {
			return
		}
		if flFlags, cerr = unix.FcntlInt(fd, unix.F_GETFL, 0); cerr != nil {
			return
		}
		if typ, cerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE); cerr != nil {
			return
		}
		passcred, cerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED)
	})
	if err != nil || cerr != nil {
		t.Fatal(err, cerr)
	}
	if fdFlags&unix.FD_CLOEXEC == 0 || flFlags&unix.O_NONBLOCK == 0 || typ != unix.SOCK_DGRAM || passcred != 1 {
		t.Errorf("FD flags %#x, file flags %#x, type %d, SO_PASSCRED %d: want close-on-exec, non-blocking, datagram, 1",
			fdFlags, flFlags, typ, passcred)
	}
}
