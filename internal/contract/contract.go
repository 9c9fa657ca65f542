// Package contract is the process contract between a pairvisor
// supervisor and its workers: the environment variables and the
// descriptor number through which a supervisor hands a worker its
// channel and settings. Package supervisor writes it and package worker
// reads it; workers in other languages implement the same (see
// docs/PROTOCOL.md, "Process contract").
//
// It holds names and numbers only. The channel itself and what flows
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

	// EnvFD holds the channel's descriptor number, always "3" (the
	// first of exec.Cmd.ExtraFiles).
	EnvFD = "PAIRVISOR_FD"

	// EnvLogLevel holds the supervisor's log level ("trace" … "error",
	// "off") so a worker does not emit lines the supervisor would drop.
	EnvLogLevel = "PAIRVISOR_LOG_LEVEL"

	// ChannelFD is the channel's descriptor number in the worker. It is
	// the only descriptor above 2 a worker inherits: the supervisor
	// marks every other one close-on-exec before it forks.
	ChannelFD = 3
)
