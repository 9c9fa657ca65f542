package config

import (
	"fmt"
	"io"
	"os"
	"reflect"
	"slices"
	"strings"
	"time"
)

// Limits on what a file may hold.
const (
	MaxFileSize = 1 << 20 // bytes
	MaxPrograms = 1000
	MaxWorkers  = 10000 // per program
	MaxErrors   = 50    // problems reported from one file; the rest are counted
	MaxListen   = 64    // listeners per program (the supervisor's MaxListeners)
)

// Values of [Program.Ready].
const (
	ReadyHello   = "hello"   // the worker says hello over the pairvisor channel (the default)
	ReadyNotify  = "notify"  // the worker sends READY=1 to $NOTIFY_SOCKET, as systemd's Type=notify
	ReadyStarted = "started" // the worker is ready once alive for ReadyAfter
)

// Values of [Program.Restart].
const (
	RestartAlways    = "always"
	RestartOnFailure = "on-failure" // the default
	RestartNever     = "never"
)

// File is a parsed and validated configuration file.
type File struct {
	// Programs in the order the file first names them.
	Programs []Program
	// Path is the name given to Parse, or the path given to Load.
	Path string
}

// Program is one [programs.NAME] table. A zero duration or count means
// "the supervisor's default", whether the key was left out or written
// as zero: this package does not know those defaults, and no setting
// needs the difference (workers = 0 is refused; max_restarts = 0, "no
// limit", is also the supervisor's default). The defaults this package
// does fill in are Workers (1), Ready, Restart and StopSignal, which are
// never zero. Slices hold nil rather than empty.
type Program struct {
	Name string // matches [a-z0-9][a-z0-9_-]{0,62}

	// Command is run with Args as each worker (found on PATH by the
	// supervisor if it has no slash). Args, the values of Env and
	// HealthCmd may hold %i (the worker's slot number) and %% (a literal %),
	// which the supervisor expands for each worker.
	Command string
	Args    []string
	// Env is added to the workers' environment: "KEY=VALUE" entries
	// sorted by key. No key begins with PAIRVISOR_ (the supervisor's
	// own contract).
	Env []string
	// Dir is the workers' working directory as written (no %
	// expansion; a relative one is relative to the supervisor's);
	// "" means the supervisor's.
	Dir string
	// User is who the workers run as: "USER" or "USER:GROUP", each a
	// name or a number, as written (the supervisor looks it up); ""
	// means as the supervisor.
	User string

	Workers int // at least 1 (default 1), at most MaxWorkers

	Ready      string        // ReadyHello, ReadyNotify or ReadyStarted
	ReadyAfter time.Duration // ReadyStarted only: alive this long is ready (key start_secs)
	Watchdog   time.Duration // ReadyNotify only: WATCHDOG_USEC (key watchdog); 0: none

	// HealthCmd is an exec probe (argv; no shell), run every
	// HealthInterval with HealthTimeout; HealthMisses consecutive
	// failures declare the worker unhealthy. Nil: no probe, and the
	// other three are zero.
	HealthCmd      []string
	HealthInterval time.Duration
	HealthTimeout  time.Duration
	HealthMisses   int

	Restart       string // RestartAlways, RestartOnFailure or RestartNever
	BackoffMin    time.Duration
	BackoffMax    time.Duration // not below BackoffMin if both are set
	HealthyAfter  time.Duration
	MaxRestarts   int // 0: no limit
	RestartWindow time.Duration

	StartTimeout time.Duration
	StopTimeout  time.Duration
	StopSignal   string // without "SIG": TERM, INT, HUP, QUIT, USR1, USR2 or KILL

	// ReadyHello only.
	PingInterval time.Duration
	PingTimeout  time.Duration
	PingMisses   int

	// After names the programs this one starts after (once they are
	// ready) and stops before; as written, each named once.
	After []string

	// Listen are the program's listeners (key listen; see
	// [ParseListen]): bound once by the supervisor and passed to every
	// worker in the systemd socket-activation layout, in this order.
	// Each address and each name appears once in a program, and an
	// address in one program only.
	Listen []Listen

	// Line is where the program's table begins in the file ([Compare]
	// ignores it).
	Line int
}

// Load reads the file at path (at most [MaxFileSize] bytes) and parses
// it with [Parse], the path naming it in messages.
func Load(path string) (*File, error) {
	f, err := os.Open(path) // closed below; close-on-exec, as os opens every file
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("config: reading %s: %w", path, err)
	}
	return Parse(path, data)
}

// Parse parses and validates data, a configuration file called name in
// messages. It returns the file, or [Errors]: every problem found, each
// naming the file, the line where known and the key. A file that is not
// valid TOML yields only its syntax error ([ErrSyntax]).
func Parse(name string, data []byte) (*File, error) {
	return parse(name, data)
}

// Program returns the program called name.
func (f *File) Program(name string) (Program, bool) {
	for _, p := range f.Programs {
		if p.Name == name {
			return p, true
		}
	}
	return Program{}, false
}

// StartOrder returns the programs' names in groups: each group names
// only programs that name (in After) programs of earlier groups only, so
// a group may start, all at once, once the groups before it are ready.
// Within a group, names keep file order. Stop in the reverse order,
// groups last to first. A File from [Parse] has no dependency cycle; for
// one built otherwise, the programs in or after a cycle form a last
// group, and names of missing programs are ignored.
func (f *File) StartOrder() [][]string {
	known := make(map[string]bool, len(f.Programs))
	for _, p := range f.Programs {
		known[p.Name] = true
	}
	placed := make(map[string]bool, len(f.Programs))
	var groups [][]string
	for len(placed) < len(known) {
		var group []string
		for _, p := range f.Programs {
			if placed[p.Name] || slices.Contains(group, p.Name) {
				continue
			}
			ready := true
			for _, a := range p.After {
				if known[a] && !placed[a] {
					ready = false
					break
				}
			}
			if ready {
				group = append(group, p.Name)
			}
		}
		if len(group) == 0 { // a cycle: the rest, in file order
			for _, p := range f.Programs {
				if !placed[p.Name] && !slices.Contains(group, p.Name) {
					group = append(group, p.Name)
				}
			}
		}
		for _, n := range group {
			placed[n] = true
		}
		groups = append(groups, group)
	}
	return groups
}

// Diff is how one file's programs differ from another's, by name.
type Diff struct {
	Added     []string // in the new file only, in its order
	Removed   []string // in the old file only, in its order
	Changed   []string // in both, some setting different; in the new file's order
	Unchanged []string // in both, every setting the same; in the new file's order
}

// Compare returns how new differs from old. A program is changed if any
// setting differs, except Line: moving a program within the file, or
// editing comments, changes nothing. After is compared as a set, and an
// empty array as an absent one. A duration or count written out at the
// supervisor's default value differs from one left out (this package
// does not know those defaults); workers = 1, ready = "hello", restart =
// "on-failure" and stop_signal = "TERM" equal their absence. A nil file
// has no programs.
func Compare(old, new *File) Diff {
	var d Diff
	olds := map[string]Program{}
	if old != nil {
		for _, p := range old.Programs {
			olds[p.Name] = p
		}
	}
	news := map[string]bool{}
	if new != nil {
		for _, p := range new.Programs {
			news[p.Name] = true
			o, ok := olds[p.Name]
			switch {
			case !ok:
				d.Added = append(d.Added, p.Name)
			case same(o, p):
				d.Unchanged = append(d.Unchanged, p.Name)
			default:
				d.Changed = append(d.Changed, p.Name)
			}
		}
	}
	if old != nil {
		for _, p := range old.Programs {
			if !news[p.Name] {
				d.Removed = append(d.Removed, p.Name)
			}
		}
	}
	return d
}

// same reports whether a and b have the same settings.
func same(a, b Program) bool {
	return reflect.DeepEqual(settings(a), settings(b))
}

// settings returns p without what Compare ignores: Line, the order of
// After, and the difference between nil and empty slices.
func settings(p Program) Program {
	p.Line = 0
	norm := func(s []string) []string {
		if len(s) == 0 {
			return nil
		}
		return s
	}
	p.Args, p.Env, p.HealthCmd = norm(p.Args), norm(p.Env), norm(p.HealthCmd)
	if len(p.Listen) == 0 {
		p.Listen = nil
	}
	if p.After = norm(p.After); p.After != nil {
		p.After = slices.Clone(p.After)
		slices.Sort(p.After)
		p.After = slices.Compact(p.After)
	}
	return p
}

// Format returns f as a TOML file that [Parse] reads back to the same
// programs (Line apart), in the same order: one [programs.NAME] table
// each, with the settings that are not zero.
func (f *File) Format() []byte {
	var b strings.Builder
	for i, p := range f.Programs {
		if i > 0 {
			b.WriteByte('\n')
		}
		fmt.Fprintf(&b, "[programs.%s]\n", quoteKey(p.Name))
		str := func(k, v string) {
			if v != "" {
				fmt.Fprintf(&b, "%s = %s\n", k, quote(v))
			}
		}
		list := func(k string, vs []string) {
			if vs == nil {
				return
			}
			q := make([]string, len(vs))
			for i, v := range vs {
				q[i] = quote(v)
			}
			fmt.Fprintf(&b, "%s = [%s]\n", k, strings.Join(q, ", "))
		}
		num := func(k string, n int) {
			if n != 0 {
				fmt.Fprintf(&b, "%s = %d\n", k, n)
			}
		}
		dur := func(k string, d time.Duration) {
			if d != 0 {
				fmt.Fprintf(&b, "%s = %s\n", k, quote(d.String()))
			}
		}
		str("command", p.Command)
		list("args", p.Args)
		if p.Env != nil {
			kvs := make([]string, len(p.Env))
			for i, kv := range p.Env {
				k, v, _ := strings.Cut(kv, "=")
				kvs[i] = quote(k) + " = " + quote(v)
			}
			fmt.Fprintf(&b, "env = { %s }\n", strings.Join(kvs, ", "))
		}
		str("dir", p.Dir)
		num("workers", p.Workers)
		str("ready", p.Ready)
		dur("start_secs", p.ReadyAfter)
		dur("watchdog", p.Watchdog)
		list("health_cmd", p.HealthCmd)
		dur("health_interval", p.HealthInterval)
		dur("health_timeout", p.HealthTimeout)
		num("health_misses", p.HealthMisses)
		str("restart", p.Restart)
		dur("backoff_min", p.BackoffMin)
		dur("backoff_max", p.BackoffMax)
		dur("healthy_after", p.HealthyAfter)
		num("max_restarts", p.MaxRestarts)
		dur("restart_window", p.RestartWindow)
		dur("start_timeout", p.StartTimeout)
		dur("stop_timeout", p.StopTimeout)
		str("stop_signal", p.StopSignal)
		dur("ping_interval", p.PingInterval)
		dur("ping_timeout", p.PingTimeout)
		num("ping_misses", p.PingMisses)
		list("after", p.After)
		if p.Listen != nil {
			ls := make([]string, len(p.Listen))
			for i, l := range p.Listen {
				ls[i] = l.String()
			}
			list("listen", ls)
		}
	}
	return []byte(b.String())
}

// quote returns s as a TOML basic string.
func quote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\u%04X`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// quoteKey returns k as a TOML key: bare if it can be.
func quoteKey(k string) string {
	if k == "" {
		return `""`
	}
	for _, c := range []byte(k) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return quote(k)
		}
	}
	return k
}
