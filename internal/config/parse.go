package config

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/BurntSushi/toml"
)

// parse is Parse.
func parse(name string, data []byte) (*File, error) {
	if len(data) > MaxFileSize {
		return nil, Errors{{File: name, Err: ErrTooLarge,
			Msg: fmt.Sprintf("the file is larger than the limit of %d bytes", MaxFileSize)}}
	}
	var tree map[string]any
	md, err := toml.Decode(string(data), &tree)
	data = stripBOM(data) // as Decode did
	if err != nil {
		return nil, Errors{syntaxError(name, data, err)}
	}
	c := &checker{file: name, pos: locate(data)}
	for k := range tree {
		if k != "programs" {
			c.add(ErrInvalid, "", c.pos.line(toml.Key{k}),
				`unknown key %q: the only top-level key is "programs"`, k)
		}
	}
	f := &File{Path: name}
	progs, ok := tree["programs"]
	if !ok {
		c.add(ErrInvalid, "", 0, "no programs: the file must have at least one [programs.NAME] table")
		return nil, c.result()
	}
	pkey := toml.Key{"programs"}
	table, ok := progs.(map[string]any)
	if !ok {
		c.typeError(c.newItem(pkey, progs, 0), "a table of programs ([programs.NAME])")
		return nil, c.result()
	}
	if len(table) == 0 {
		c.add(ErrInvalid, pkey.String(), c.pos.line(pkey), "no programs: the file must have at least one [programs.NAME] table")
	}
	if len(table) > MaxPrograms {
		c.add(ErrInvalid, pkey.String(), c.pos.line(pkey), "%d programs, more than the limit of %d", len(table), MaxPrograms)
		return nil, c.result()
	}
	for _, n := range programOrder(md.Keys(), table) {
		f.Programs = append(f.Programs, c.program(n, table[n]))
	}
	c.dependencies(f.Programs)
	c.listenersShared(f.Programs)
	if len(c.errs) > 0 {
		return nil, c.result()
	}
	return f, nil
}

// syntaxError turns the TOML library's error about data into an Error.
// The line and column are worked out from the byte offset the library
// gives: its line number is one too many for an error at the end of a
// line, and its column is unset.
func syntaxError(name string, data []byte, err error) *Error {
	var pe toml.ParseError
	if !errors.As(err, &pe) {
		return &Error{File: name, Msg: err.Error(), Err: ErrSyntax}
	}
	e := &Error{File: name, Line: pe.Position.Line, Msg: pe.Message, Err: ErrSyntax}
	if off := pe.Position.Start; off >= 0 && off <= len(data) {
		p := newLines(data).pos(off)
		e.Line, e.Col = p.line, p.col
	}
	return e
}

// programOrder returns the names of the programs in table in the order
// the document first mentions each (keys is in document order).
func programOrder(keys []toml.Key, table map[string]any) []string {
	seen := make(map[string]bool, len(table))
	names := make([]string, 0, len(table))
	for _, k := range keys {
		if len(k) >= 2 && k[0] == "programs" && !seen[k[1]] {
			if _, ok := table[k[1]]; ok {
				seen[k[1]] = true
				names = append(names, k[1])
			}
		}
	}
	var rest []string // none, unless the library's key list changes
	for n := range table {
		if !seen[n] {
			rest = append(rest, n)
		}
	}
	slices.Sort(rest)
	return append(names, rest...)
}

// checker collects the problems found in one file.
type checker struct {
	file string
	pos  *positions
	errs Errors
}

// add records a problem with key (a dotted key as written in messages)
// at line (0 if unknown).
func (c *checker) add(kind error, key string, line int, format string, args ...any) {
	c.errs = append(c.errs, &Error{File: c.file, Line: line, Key: key, Msg: fmt.Sprintf(format, args...), Err: kind})
}

// result returns the problems sorted by line, at most MaxErrors of them
// and then a count of the rest.
func (c *checker) result() Errors {
	es := c.errs
	sort.SliceStable(es, func(i, j int) bool {
		a, b := es[i], es[j]
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		if a.Key != b.Key {
			return a.Key < b.Key
		}
		return a.Msg < b.Msg
	})
	if len(es) > MaxErrors {
		more := len(es) - MaxErrors
		es = append(es[:MaxErrors:MaxErrors], &Error{File: c.file, Err: ErrInvalid,
			Msg: fmt.Sprintf("%d more problems not shown", more)})
	}
	return es
}

// item is one key/value pair of a program's table.
type item struct {
	path toml.Key // the key
	key  string   // as written in messages: path, or an element of it ("programs.db.args[1]")
	line int      // where the key is written, or else the program's table
	val  any
}

// newItem returns the item for path, found at line (or else at
// fallback).
func (c *checker) newItem(path toml.Key, val any, fallback int) item {
	line := c.pos.line(path)
	if line == 0 {
		line = fallback
	}
	return item{path: path, key: path.String(), line: line, val: val}
}

// elem returns the item for it's i'th element, v.
func (it item) elem(i int, v any) item {
	return item{path: it.path, key: fmt.Sprintf("%s[%d]", it.key, i), line: it.line, val: v}
}

func (c *checker) invalid(it item, format string, args ...any) {
	c.add(ErrInvalid, it.key, it.line, format, args...)
}

// typeError reports that it's value is not what the key takes.
func (c *checker) typeError(it item, want string) {
	c.invalid(it, "must be %s, got %s", want, describe(it.val))
}

// describe names a decoded TOML value's type, and shows it if it is a
// short scalar.
func describe(v any) string {
	switch v := v.(type) {
	case string:
		if len(v) > 40 {
			v = v[:37]
			for !utf8.ValidString(v) {
				v = v[:len(v)-1]
			}
			return fmt.Sprintf("string %q...", v)
		}
		return fmt.Sprintf("string %q", v)
	case int64:
		return fmt.Sprintf("integer %d", v)
	case float64:
		return fmt.Sprintf("float %v", v)
	case bool:
		return fmt.Sprintf("boolean %v", v)
	case []any:
		return "an array"
	case []map[string]any:
		return "an array of tables"
	case map[string]any:
		return "a table"
	case time.Time:
		return "a date-time"
	}
	return fmt.Sprintf("a TOML %T", v) // a local date or time
}

// text returns it's value as a string with no NUL in it.
func (c *checker) text(it item) (string, bool) {
	s, ok := it.val.(string)
	if !ok {
		c.typeError(it, "a string")
		return "", false
	}
	if strings.IndexByte(s, 0) >= 0 {
		c.invalid(it, "must not contain a NUL character")
		return "", false
	}
	return s, true
}

// strs returns it's value, an array of strings, nil if empty; with
// expand, each must be valid for Expand.
func (c *checker) strs(it item, expand bool) ([]string, bool) {
	a, ok := it.val.([]any)
	if !ok {
		c.typeError(it, "an array of strings")
		return nil, false
	}
	var out []string
	good := true
	for i, v := range a {
		e := it.elem(i, v)
		s, ok := c.text(e)
		if ok && expand {
			if err := checkExpand(s); err != nil {
				c.invalid(e, "%v", err)
				ok = false
			}
		}
		good = good && ok
		out = append(out, s)
	}
	return out, good
}

// integer returns it's value, an integer from lo to hi.
func (c *checker) integer(it item, lo, hi int64) int {
	n, ok := it.val.(int64)
	if !ok {
		c.typeError(it, "an integer")
		return 0
	}
	if n < lo {
		c.invalid(it, "must be at least %d, got %d", lo, n)
		return 0
	}
	if n > hi {
		c.invalid(it, "must be at most %d, got %d", hi, n)
		return 0
	}
	return int(n)
}

// duration returns it's value, a Go duration string not negative.
func (c *checker) duration(it item) time.Duration {
	s, ok := it.val.(string)
	if !ok {
		c.typeError(it, `a duration string such as "1.5s" or "100ms"`)
		return 0
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		c.invalid(it, `must be a duration such as "1.5s" or "100ms", got %q`, s)
		return 0
	}
	if d < 0 {
		c.invalid(it, "must not be negative, got %q", s)
		return 0
	}
	return d
}

// choice returns it's value, one of choices, or "".
func (c *checker) choice(it item, choices ...string) string {
	s, ok := c.text(it)
	if !ok {
		return ""
	}
	if !slices.Contains(choices, s) {
		c.invalid(it, "must be %s, got %q", alternatives(choices), s)
		return ""
	}
	return s
}

// alternatives returns `"a", "b" or "c"`.
func alternatives(choices []string) string {
	q := make([]string, len(choices))
	for i, s := range choices {
		q[i] = fmt.Sprintf("%q", s)
	}
	if len(q) == 1 {
		return q[0]
	}
	return strings.Join(q[:len(q)-1], ", ") + " or " + q[len(q)-1]
}

// stopSignals are the names stop_signal takes, with or without "SIG".
var stopSignals = []string{"TERM", "INT", "HUP", "QUIT", "USR1", "USR2", "KILL"}

// fields holds what each key of a program's table does.
var fields = map[string]func(c *checker, p *Program, it item){
	"command": func(c *checker, p *Program, it item) {
		if s, ok := c.text(it); ok && s == "" {
			c.invalid(it, "must not be empty")
		} else {
			p.Command = s
		}
	},
	"args":   func(c *checker, p *Program, it item) { p.Args, _ = c.strs(it, true) },
	"env":    (*checker).env,
	"listen": (*checker).listen, // listen.go
	"dir":    func(c *checker, p *Program, it item) { p.Dir, _ = c.text(it) },
	"user":   (*checker).user,
	"workers": func(c *checker, p *Program, it item) {
		if n := c.integer(it, 1, MaxWorkers); n > 0 {
			p.Workers = n
		}
	},
	"ready": func(c *checker, p *Program, it item) {
		if s := c.choice(it, ReadyHello, ReadyNotify, ReadyStarted); s != "" {
			p.Ready = s
		}
	},
	"start_secs": func(c *checker, p *Program, it item) { p.ReadyAfter = c.duration(it) },
	"watchdog":   func(c *checker, p *Program, it item) { p.Watchdog = c.duration(it) },
	"health_cmd": func(c *checker, p *Program, it item) {
		if _, ok := it.val.(string); ok {
			c.invalid(it, `must be an array (the command and its arguments, run without a shell), got %s; for a shell command write ["sh", "-c", "..."]`, describe(it.val))
			return
		}
		if argv, ok := c.strs(it, true); ok && (len(argv) == 0 || argv[0] == "") {
			c.invalid(it, "must name a command: its first element must not be empty")
		} else {
			p.HealthCmd = argv
		}
	},
	"health_interval": func(c *checker, p *Program, it item) { p.HealthInterval = c.duration(it) },
	"health_timeout":  func(c *checker, p *Program, it item) { p.HealthTimeout = c.duration(it) },
	"health_misses":   func(c *checker, p *Program, it item) { p.HealthMisses = c.integer(it, 0, math.MaxInt32) },
	"restart": func(c *checker, p *Program, it item) {
		if s := c.choice(it, RestartAlways, RestartOnFailure, RestartNever); s != "" {
			p.Restart = s
		}
	},
	"backoff_min":    func(c *checker, p *Program, it item) { p.BackoffMin = c.duration(it) },
	"backoff_max":    func(c *checker, p *Program, it item) { p.BackoffMax = c.duration(it) },
	"healthy_after":  func(c *checker, p *Program, it item) { p.HealthyAfter = c.duration(it) },
	"max_restarts":   func(c *checker, p *Program, it item) { p.MaxRestarts = c.integer(it, 0, math.MaxInt32) },
	"restart_window": func(c *checker, p *Program, it item) { p.RestartWindow = c.duration(it) },
	"start_timeout":  func(c *checker, p *Program, it item) { p.StartTimeout = c.duration(it) },
	"stop_timeout":   func(c *checker, p *Program, it item) { p.StopTimeout = c.duration(it) },
	"stop_signal": func(c *checker, p *Program, it item) {
		s, ok := c.text(it)
		if !ok {
			return
		}
		if n := strings.TrimPrefix(s, "SIG"); slices.Contains(stopSignals, n) {
			p.StopSignal = n
			return
		}
		c.invalid(it, "must be %s (with or without SIG), got %q", alternatives(stopSignals), s)
	},
	"ping_interval": func(c *checker, p *Program, it item) { p.PingInterval = c.duration(it) },
	"ping_timeout":  func(c *checker, p *Program, it item) { p.PingTimeout = c.duration(it) },
	"ping_misses":   func(c *checker, p *Program, it item) { p.PingMisses = c.integer(it, 0, math.MaxInt32) },
	"after": func(c *checker, p *Program, it item) {
		a, ok := it.val.([]any)
		if !ok {
			c.typeError(it, "an array of program names")
			return
		}
		for i, v := range a {
			if n, ok := c.text(it.elem(i, v)); !ok {
				continue
			} else if slices.Contains(p.After, n) {
				c.invalid(it.elem(i, v), "%q is listed twice", n)
			} else {
				p.After = append(p.After, n)
			}
		}
	},
}

// env sets p.Env from it, a table of strings.
func (c *checker) env(p *Program, it item) {
	t, ok := it.val.(map[string]any)
	if !ok {
		c.typeError(it, "a table of strings")
		return
	}
	keys := make([]string, 0, len(t))
	for k := range t {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		e := c.newItem(join(it.path, toml.Key{k}), t[k], it.line)
		v, ok := c.text(e)
		switch {
		case !ok:
		case k == "" || strings.ContainsAny(k, "=\x00"):
			c.invalid(e, `an environment variable's name must be neither empty nor contain "=" or NUL`)
		case strings.HasPrefix(k, "PAIRVISOR_"):
			c.invalid(e, "PAIRVISOR_ variables are the supervisor's own and cannot be set")
		default:
			if err := checkExpand(v); err != nil {
				c.invalid(e, "%v", err)
				continue
			}
			p.Env = append(p.Env, k+"="+v)
		}
	}
}

// validName reports whether name matches [a-z0-9][a-z0-9_-]{0,62}.
func validName(name string) bool {
	if len(name) == 0 || len(name) > 63 {
		return false
	}
	for i, c := range []byte(name) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || i > 0 && (c == '_' || c == '-')) {
			return false
		}
	}
	return true
}

// program checks the table of the program called name and returns the
// program, as far as it is valid.
func (c *checker) program(name string, val any) Program {
	path := toml.Key{"programs", name}
	line := c.pos.line(path)
	p := Program{Name: name, Line: line, Workers: 1, Ready: ReadyHello, Restart: RestartOnFailure, StopSignal: "TERM"}
	if !validName(name) {
		c.add(ErrInvalid, path.String(), line,
			`invalid program name %q: want 1 to 63 of a-z, 0-9, "_" and "-", beginning with a letter or digit`, name)
	}
	t, ok := val.(map[string]any)
	if !ok {
		c.typeError(c.newItem(path, val, line), "a table ([programs."+path[1:].String()+"])")
		return p
	}
	set := make(map[string]item, len(t))
	for k, v := range t {
		it := c.newItem(join(path, toml.Key{k}), v, line)
		f, ok := fields[k]
		if !ok {
			c.add(ErrInvalid, path.String(), it.line, "unknown key %q%s", k, suggest(k))
			continue
		}
		set[k] = it
		f(c, &p, it)
	}
	if _, ok := set["command"]; !ok {
		c.add(ErrInvalid, path.String(), line, `missing required key "command"`)
	}
	only := func(cond bool, why string, keys ...string) {
		if cond {
			return
		}
		for _, k := range keys {
			if it, ok := set[k]; ok {
				c.invalid(it, "only applies %s", why)
			}
		}
	}
	only(p.Ready == ReadyStarted, fmt.Sprintf(`with ready = "started" (ready is %q)`, p.Ready), "start_secs")
	only(p.Ready == ReadyNotify, fmt.Sprintf(`with ready = "notify" (ready is %q)`, p.Ready), "watchdog")
	only(p.Ready == ReadyHello, fmt.Sprintf(`with ready = "hello" (ready is %q)`, p.Ready), "ping_interval", "ping_timeout", "ping_misses")
	_, health := set["health_cmd"]
	only(health, "with health_cmd", "health_interval", "health_timeout", "health_misses")
	if p.BackoffMin > 0 && p.BackoffMax > 0 && p.BackoffMax < p.BackoffMin {
		c.invalid(set["backoff_max"], "must not be less than backoff_min (%v), got %v", p.BackoffMin, p.BackoffMax)
	}
	return p
}

// suggest returns ` (did you mean "KEY"?)` for the known key nearest k,
// if one is near enough to be a typo of it.
func suggest(k string) string {
	best, dist := "", 3
	for f := range fields {
		if d := editDistance(k, f); d < dist || d == dist && f < best {
			best, dist = f, d
		}
	}
	if best == "" || dist > 2 || dist >= len(k)/2+1 {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// editDistance is the Levenshtein distance between a and b (by bytes),
// with a transposition counting as one edit. It gives up (returning a
// large number) for long strings.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return math.MaxInt32
	}
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}

// dependencies checks what each program's After names: programs of the
// file, not itself, and no cycle.
func (c *checker) dependencies(progs []Program) {
	index := make(map[string]int, len(progs))
	for i, p := range progs {
		index[p.Name] = i
	}
	edges := make([][]int, len(progs))
	afterItem := func(p Program) item {
		return c.newItem(toml.Key{"programs", p.Name, "after"}, nil, p.Line)
	}
	for i, p := range progs {
		for _, a := range p.After {
			j, ok := index[a]
			switch {
			case a == p.Name:
				c.invalid(afterItem(p), "a program cannot start after itself")
			case !ok:
				c.invalid(afterItem(p), "no program named %q", a)
			default:
				edges[i] = append(edges[i], j)
			}
		}
	}
	for _, scc := range components(edges) {
		if len(scc) < 2 {
			continue
		}
		cycle := shortestCycle(edges, scc)
		names := make([]string, len(cycle)+1)
		for k, i := range cycle {
			names[k] = progs[i].Name
		}
		names[len(cycle)] = names[0]
		c.invalid(afterItem(progs[cycle[0]]), "dependency cycle: %s", strings.Join(names, " -> "))
	}
}

// components returns the strongly connected components of the graph
// (Tarjan's algorithm), each sorted.
func components(edges [][]int) [][]int {
	n := len(edges)
	index := make([]int, n) // 0: not visited; else visit order + 1
	low := make([]int, n)
	onStack := make([]bool, n)
	var stack []int
	var out [][]int
	next := 1
	var visit func(v int)
	visit = func(v int) { // recursion depth at most MaxPrograms
		index[v], low[v] = next, next
		next++
		stack = append(stack, v)
		onStack[v] = true
		for _, w := range edges[v] {
			if index[w] == 0 {
				visit(w)
				low[v] = min(low[v], low[w])
			} else if onStack[w] {
				low[v] = min(low[v], index[w])
			}
		}
		if low[v] == index[v] {
			var scc []int
			for {
				w := stack[len(stack)-1]
				stack = stack[:len(stack)-1]
				onStack[w] = false
				scc = append(scc, w)
				if w == v {
					break
				}
			}
			slices.Sort(scc)
			out = append(out, scc)
		}
	}
	for v := range n {
		if index[v] == 0 {
			visit(v)
		}
	}
	return out
}

// shortestCycle returns a shortest cycle through the first node of scc
// (a strongly connected component with at least two nodes), within it:
// the nodes in order, the first not repeated at the end.
func shortestCycle(edges [][]int, scc []int) []int {
	start := scc[0]
	in := make(map[int]bool, len(scc))
	for _, v := range scc {
		in[v] = true
	}
	prev := map[int]int{}
	queue := []int{start}
	for len(queue) > 0 {
		v := queue[0]
		queue = queue[1:]
		for _, w := range edges[v] {
			if w == start {
				var path []int
				for u := v; u != start; u = prev[u] {
					path = append(path, u)
				}
				path = append(path, start)
				slices.Reverse(path)
				return path
			}
			if _, seen := prev[w]; !seen && in[w] {
				prev[w] = v
				queue = append(queue, w)
			}
		}
	}
	return scc // not reached: scc is strongly connected
}

// user checks the user key: USER or USER:GROUP, neither part empty.
func (c *checker) user(p *Program, it item) {
	s, ok := c.text(it)
	if !ok {
		return
	}
	u, g, hasGroup := strings.Cut(s, ":")
	if u == "" || (hasGroup && (g == "" || strings.Contains(g, ":"))) {
		c.invalid(it, `must be "USER" or "USER:GROUP"`)
		return
	}
	p.User = s
}
