// Package contract is the process contract between a pairvisor
// supervisor and its workers: the environment variables and the
// descriptor number through which a supervisor hands a worker its
// channel and settings. Package supervisor writes it and package worker
// reads it; workers in other languages implement the same (see
// docs/PROTOCOL.md, "Process contract").
//
// It holds names and numbers only (and the rule for listener names). The channel itself and what flows
// over it are package ipc's; starting and watching processes is package
// supervisor's.
package contract

// The supervisor↔worker contract: how a supervisor hands a worker its
// channel and settings. Workers in other languages implement exactly
// this (see docs/PROTOCOL.md, "Process contract").
const (
	// EnvWorker marks a process as a worker; its value is the worker's
	// id, a decimal number from 1.
	EnvWorker = "PAIRVISOR_WORKER"

	// EnvParentPID holds the supervisor's pid. A worker whose parent is
	// someone else, or whose fd 3 is not a socket created by that parent
	// (SO_PEERCRED of a socketpair names the process that created it),
	// inherited the variables by mistake and refuses to run.
	EnvParentPID = "PAIRVISOR_PARENT_PID"

	// EnvFD holds the channel's descriptor number: "3" (ChannelFD)
	// for a worker without listeners, 3+n for one given n listeners,
	// which come first (see "Listeners" below). A worker reads the
	// channel's number from it and never assumes 3.
	EnvFD = "PAIRVISOR_FD"

	// EnvLogLevel holds the supervisor's log level ("trace" … "error",
	// "off") so a worker does not emit lines the supervisor would drop.
	EnvLogLevel = "PAIRVISOR_LOG_LEVEL"

	// ChannelFD is the channel's descriptor number in a worker without
	// listeners. The channel and the listeners are the only descriptors
	// above 2 a worker inherits: the supervisor marks every other one
	// close-on-exec before it forks.
	ChannelFD = 3
)

// Listeners: the systemd socket-activation layout (sd_listen_fds(3)).
// A worker given n listeners inherits them as fds ListenFDStart …
// ListenFDStart+n−1, in the order the supervisor was given them, the
// channel right after them (fd 3+n, named by EnvFD), and:
//
//	LISTEN_FDS=n
//	LISTEN_FDNAMES=name1:name2:…   (n names, each ValidListenName)
//	LISTEN_PID=<the worker's own pid>
//
// so that a program written for systemd socket activation runs
// unchanged. A worker without listeners gets none of the three
// variables (nor any the supervisor inherited) and its channel on fd 3,
// exactly as before listeners existed.
const (
	EnvListenFDs     = "LISTEN_FDS"
	EnvListenFDNames = "LISTEN_FDNAMES"
	EnvListenPID     = "LISTEN_PID"

	// ListenFDStart is the first listener's descriptor
	// (SD_LISTEN_FDS_START).
	ListenFDStart = 3

	// MaxListenNameLen is the longest listener name, as systemd's
	// FileDescriptorName=.
	MaxListenNameLen = 255

	// UnnamedListener is the name LISTEN_FDNAMES gives a listener
	// passed without one, as systemd's sd_listen_fds_with_names does.
	UnnamedListener = "unknown"
)

// ValidListenName reports whether s may name a listener in
// LISTEN_FDNAMES: 1 to MaxListenNameLen characters of A-Z, a-z, 0-9,
// '_', '.' and '-' (a subset of what systemd allows, so that no name
// needs escaping anywhere: not the ':' separator, no spaces, no
// control characters).
func ValidListenName(s string) bool {
	if len(s) == 0 || len(s) > MaxListenNameLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return false
		}
	}
	return true
}
