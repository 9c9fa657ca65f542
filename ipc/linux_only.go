//go:build !linux

package ipc

// pairvisor runs on Linux only: it relies on SO_PEERCRED, abstract
// sockets, pidfds, the parent-death signal and renameat2. Building it
// elsewhere stops here, with this name in the error.
var _ = pairvisorRequiresLinux
