// Package tcplisten binds TCP listening sockets with raw system calls,
// as net.Listen does, without linking package net into the program.
//
// The supervisor command is also every built-in worker (it re-executes
// itself), so whatever it links is paid at each worker's start. Package
// net links the cgo resolver, which makes a default build dynamically
// linked: the dynamic loader then runs before every worker. The command
// binds its --listen sockets here instead, and hands them on as
// *os.File values (see package supervisor's NewListener).
//
// Addresses are IP literals, as in systemd's ListenStream=: no name is
// resolved (see [ParseHost]). The socket is made as net.Listen makes
// it: close-on-exec and non-blocking, SO_REUSEADDR set, IPV6_V6ONLY set
// on every IPv6 socket (on for tcp6, off for tcp, so that a wildcard
// tcp listener takes IPv4 connections too), and the backlog of
// net.Listen (the kernel's somaxconn).
package tcplisten
