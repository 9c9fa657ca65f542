package main

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/hashicorp/go-hclog"

	"github.com/pairvisor/pairvisor/internal/config"
	"github.com/pairvisor/pairvisor/internal/tcplisten"
	"github.com/pairvisor/pairvisor/ipc/listen"
	"github.com/pairvisor/pairvisor/supervisor"
)

// Listeners of `run`: sockets the CLI binds once and the workers of a
// program share (--listen, or listen in the config file); see
// docs/LISTENERS.md.

// listenList is the repeatable --listen flag: [NAME=]ADDR, each parsed
// as it is given (config.ParseListen), so a bad one is a usage error
// naming the flag.
type listenList []config.Listen

func (l *listenList) String() string {
	s := make([]string, len(*l))
	for i, x := range *l {
		s[i] = x.String()
	}
	return strings.Join(s, " ")
}

func (l *listenList) Set(s string) error {
	x, err := config.ParseListen(s)
	if err != nil {
		return err
	}
	*l = append(*l, x)
	return nil
}

// checkListens checks one program's listeners beyond their syntax:
// each address and each name once, a unix path that fits sun_path.
// what names them in messages ("--listen", or the config key).
func checkListens(ls []config.Listen, what string) error {
	if len(ls) > supervisor.MaxListeners {
		return fmt.Errorf("%s: %d listeners, more than the limit of %d", what, len(ls), supervisor.MaxListeners)
	}
	for i, l := range ls {
		if l.Network == "unix" && l.Address[0] != '@' && len(l.Address) > listen.MaxPathLen {
			return fmt.Errorf("%s %s: the path must be at most %d bytes (the kernel's sun_path), got %d bytes", what, l, listen.MaxPathLen, len(l.Address))
		}
		for _, o := range ls[:i] {
			if o.Addr() == l.Addr() {
				return fmt.Errorf("%s %s: address %s is given twice", what, l, l.Addr())
			}
			if o.Name == l.Name {
				return fmt.Errorf("%s %s: name %q is used twice (also by %s); name them: NAME=ADDRESS", what, l, l.Name, o.Addr())
			}
		}
	}
	return nil
}

// listenerSet is the run's sockets, by address. runCmd owns it for its
// whole life and closes every socket when the run has ended. A config
// reload keeps the sockets of the addresses it still lists (the same
// descriptors go to the new run: that is what makes a blue/green roll
// of a changed program lose nothing), binds new addresses, and closes
// those no longer listed once the reload is applied; a supervisor run
// still being retired keeps its own duplicates until it ends (see
// supervisor.Config.Listeners), so it loses nothing either.
type listenerSet struct {
	log    hclog.Logger
	passed *passedSockets // what systemd passed: the first attach takes from it

	reloadMu sync.Mutex // serialises reloads: attach, Replace, settle

	mu    sync.Mutex // guards what follows
	socks map[string]*boundSocket
	order []string // addresses in the order first bound
	used  map[string]bool
}

// boundSocket is one socket of the set.
type boundSocket struct {
	spec    config.Listen
	program string
	file    *os.File         // the socket (supervisor.NewListener's duplicate)
	unix    *listen.Listener // a unix socket's path and lock; nil for TCP
	bound   string           // the address bound: the port chosen for port 0
}

// listenerDoc is one listener in `status --json`.
type listenerDoc struct {
	Name    string `json:"name"`
	Program string `json:"program"`
	Address string `json:"address"` // as configured: tcp://HOST:PORT or unix:PATH
	Bound   string `json:"bound"`   // as bound: HOST:PORT with the port chosen for port 0, or the path
}

// runListeners is the listener set of this process's run, for reload
// and status; runCmd sets it before anything else starts. One run per
// process.
var runListeners *listenerSet

func newListenerSet(log hclog.Logger, passed *passedSockets) *listenerSet {
	return &listenerSet{log: log, passed: passed, socks: map[string]*boundSocket{}, used: map[string]bool{}}
}

// attach binds the addresses of specs (specs[i] for programs[i]) that
// are not bound yet and sets each program's Config.Listeners. On error
// the sockets it bound stay in the set, unused: settle(nil) closes them.
func (s *listenerSet) attach(programs []supervisor.Program, specs [][]config.Listen) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range programs {
		p := &programs[i]
		p.Config.Listeners = nil
		for _, spec := range specs[i] {
			b := s.socks[spec.Addr()]
			if b == nil {
				var err error
				if b, err = s.take(spec); err != nil {
					return err
				}
				b.program = p.Name
				s.socks[spec.Addr()] = b
				s.order = append(s.order, spec.Addr())
				s.log.Info("listening", "program", p.Name, "listener", spec.Name, "address", spec.Addr(), "bound", b.bound)
			}
			p.Config.Listeners = append(p.Config.Listeners, supervisor.Listener{Name: spec.Name, File: b.file})
		}
	}
	return nil
}

// take binds spec's address, or takes the socket systemd passed for it
// (activation.go).
func (s *listenerSet) take(spec config.Listen) (*boundSocket, error) {
	f, bound, err := s.passed.forListen(spec)
	if err != nil || f == nil {
		if err == nil {
			return s.bind(spec)
		}
		return nil, err
	}
	sl, err := supervisor.NewListener(spec.Name, f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", spec.Addr(), err)
	}
	return &boundSocket{spec: spec, file: sl.File, bound: bound}, nil
}

// bind binds spec's address.
func (s *listenerSet) bind(spec config.Listen) (*boundSocket, error) {
	if spec.Network == "unix" {
		l, err := listen.New(spec.Address, listen.Config{WatchPeriod: -1, Logger: s.log})
		if err != nil {
			if errors.Is(err, listen.ErrInUse) || errors.Is(err, listen.ErrLocked) {
				return nil, fmt.Errorf("%s: address already in use: %w", spec.Addr(), err)
			}
			return nil, fmt.Errorf("%s: %w", spec.Addr(), err)
		}
		sl, err := supervisor.NewListener(spec.Name, l)
		if err != nil {
			l.Close()
			return nil, fmt.Errorf("%s: %w", spec.Addr(), err)
		}
		return &boundSocket{spec: spec, file: sl.File, unix: l, bound: spec.Address}, nil
	}
	f, bound, err := tcplisten.Listen(spec.Network, spec.Address)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("%s: address already in use (%w)", spec.Addr(), err)
		}
		return nil, fmt.Errorf("%s: %w", spec.Addr(), err)
	}
	defer f.Close() // the duplicate is the socket from now on
	sl, err := supervisor.NewListener(spec.Name, f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", spec.Addr(), err)
	}
	return &boundSocket{spec: spec, file: sl.File, bound: bound.String()}, nil
}

// settle makes the sockets of programs, which the group now runs, the
// ones in use (with their program and name, for status) and closes
// every other one. With programs nil it keeps the ones in use before:
// a reload that failed closes only what it bound.
func (s *listenerSet) settle(programs []supervisor.Program) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if programs != nil {
		s.used = map[string]bool{}
		for _, p := range programs {
			for _, l := range p.Config.Listeners {
				for addr, b := range s.socks {
					if b.file == l.File {
						s.used[addr] = true
						b.program, b.spec.Name = p.Name, l.Name
					}
				}
			}
		}
	}
	for _, addr := range slices.Clone(s.order) {
		if !s.used[addr] {
			s.closeLocked(addr, "closed a listener no longer configured")
		}
	}
}

// closeLocked closes the socket of addr and forgets it, logging why.
func (s *listenerSet) closeLocked(addr, why string) {
	b := s.socks[addr]
	b.file.Close()
	if b.unix != nil {
		b.unix.Close() // removes the socket file and its lock
	}
	delete(s.socks, addr)
	s.order = slices.DeleteFunc(s.order, func(a string) bool { return a == addr })
	s.log.Info(why, "listener", b.spec.Name, "address", addr)
}

// close closes every socket; the run has ended.
func (s *listenerSet) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, addr := range slices.Clone(s.order) {
		s.closeLocked(addr, "closed listener")
	}
}

// docs describes the sockets in use for status, in the order bound.
func (s *listenerSet) docs() []listenerDoc {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []listenerDoc
	for _, addr := range s.order {
		b := s.socks[addr]
		out = append(out, listenerDoc{Name: b.spec.Name, Program: b.program, Address: addr, Bound: b.bound})
	}
	return out
}
