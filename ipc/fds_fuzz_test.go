//go:build linux

package ipc

import (
	"encoding/binary"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

// FuzzParseRights decodes arbitrary bytes as the control data of a
// recvmsg(2). parse must not panic or read outside the buffer, and
// whenever x/sys/unix's own parser splits the buffer into messages,
// parse must find the descriptors of its SCM_RIGHTS messages (each
// whole 4 bytes of their data), in order.
//
// Seeds: the f.Add calls below.
func FuzzParseRights(f *testing.F) {
	f.Add(unix.UnixRights(3))
	f.Add(unix.UnixRights(3, 4, 5, 6))
	f.Add(append(unix.UnixRights(7), unix.UnixRights(8, 9)...))
	f.Add(unix.UnixCredentials(&unix.Ucred{Pid: 1, Uid: 2, Gid: 3}))
	f.Add(append(unix.UnixCredentials(&unix.Ucred{Pid: 1}), unix.UnixRights(10)...))
	f.Add(unix.UnixRights(3)[:unix.CmsgLen(0)+2])
	f.Add([]byte{})
	f.Add(make([]byte, 100))
	f.Fuzz(func(t *testing.T, oob []byte) {
		rf := &recvFiles{}
		rf.parse(oob)
		msgs, err := unix.ParseSocketControlMessage(oob)
		if err != nil {
			return
		}
		var want []int
		for _, m := range msgs {
			if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_RIGHTS {
				for i := 0; i+4 <= len(m.Data); i += 4 {
					want = append(want, int(int32(binary.NativeEndian.Uint32(m.Data[i:]))))
				}
			}
		}
		if !slices.Equal(rf.got, want) && !(len(rf.got) == 0 && len(want) == 0) {
			t.Fatalf("parse found %v, x/sys %v", rf.got, want)
		}
	})
}
