package config

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

// exampleFile is the format's example: every key set.
const exampleFile = `# pairvisor.toml
[programs.db]
command = "python3"                 # required
args = ["db.py", "--port", "54%i"]  # %i = slot
env = { DATA = "/var/lib/db/%i", "A B" = "100%%" }
dir = "/srv/db"
workers = 2
ready = "notify"
health_cmd = ["pg_isready", "-p", "54%i"]
health_interval = "10s"
health_timeout = "5s"
health_misses = 3
restart = "always"
backoff_min = "100ms"
backoff_max = "30s"
healthy_after = "10s"
max_restarts = 5
restart_window = "1m"
start_timeout = "10s"
stop_timeout = "5s"
stop_signal = "SIGINT"

[programs.web]
command = "/usr/bin/web"
ready = "hello"
ping_interval = "1.5s"
ping_timeout = "1s"
ping_misses = 4
after = ["db"]
listen = ["http=tcp://:8080", "unix:/run/web.sock"]

[programs.batch]
command = "batch"
ready = "started"
start_secs = "2s"
restart = "never"
after = ["web", "db"]
`

func TestParseExample(t *testing.T) {
	f, err := Parse("p.toml", []byte(exampleFile))
	if err != nil {
		t.Fatal(err)
	}
	want := []Program{{
		Name: "db", Command: "python3", Args: []string{"db.py", "--port", "54%i"},
		Env: []string{"A B=100%%", "DATA=/var/lib/db/%i"}, Dir: "/srv/db", Workers: 2, Ready: ReadyNotify,
		HealthCmd: []string{"pg_isready", "-p", "54%i"}, HealthInterval: 10 * time.Second, HealthTimeout: 5 * time.Second, HealthMisses: 3,
		Restart: RestartAlways, BackoffMin: 100 * time.Millisecond, BackoffMax: 30 * time.Second, HealthyAfter: 10 * time.Second,
		MaxRestarts: 5, RestartWindow: time.Minute, StartTimeout: 10 * time.Second, StopTimeout: 5 * time.Second, StopSignal: "INT",
		Line: 2,
	}, {
		Name: "web", Command: "/usr/bin/web", Workers: 1, Ready: ReadyHello, Restart: RestartOnFailure, StopSignal: "TERM",
		PingInterval: 1500 * time.Millisecond, PingTimeout: time.Second, PingMisses: 4, After: []string{"db"}, Line: 23,
		Listen: []Listen{{Name: "http", Network: "tcp", Address: ":8080"}, {Name: "unix-web.sock", Network: "unix", Address: "/run/web.sock"}},
	}, {
		Name: "batch", Command: "batch", Workers: 1, Ready: ReadyStarted, ReadyAfter: 2 * time.Second, Restart: RestartNever,
		StopSignal: "TERM", After: []string{"web", "db"}, Line: 32,
	}}
	if !reflect.DeepEqual(f.Programs, want) {
		t.Errorf("got\n%+v\nwant\n%+v", f.Programs, want)
	}
	if f.Path != "p.toml" {
		t.Errorf("Path %q", f.Path)
	}
	if p, ok := f.Program("web"); !ok || p.Name != "web" || p.Line != 23 {
		t.Errorf("Program(web) = %+v, %v", p, ok)
	}
	if _, ok := f.Program("nope"); ok {
		t.Error("Program(nope) found")
	}
}

// TestDefaults: a program with only a command gets the documented
// defaults: one worker, hello, on-failure, TERM, everything else zero.
func TestDefaults(t *testing.T) {
	f, err := Parse("p.toml", []byte("\n\n[programs.a]\ncommand = \"x\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := Program{Name: "a", Command: "x", Workers: 1, Ready: ReadyHello, Restart: RestartOnFailure, StopSignal: "TERM", Line: 3}
	if !reflect.DeepEqual(f.Programs, []Program{want}) {
		t.Errorf("got %+v, want %+v", f.Programs, want)
	}
}

// TestAccepted: values at the edges of what is allowed, and other ways
// to write a file, parse to what they say.
func TestAccepted(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		check     func(*File) error
	}{
		{"durations", `[programs.a]
command = "x"
start_timeout = "1m30s"
stop_timeout = "1.5s"
backoff_min = "0s"
backoff_max = "250us"`,
			func(f *File) error {
				p := f.Programs[0]
				if p.StartTimeout != 90*time.Second || p.StopTimeout != 1500*time.Millisecond || p.BackoffMin != 0 || p.BackoffMax != 250*time.Microsecond {
					return fmt.Errorf("%+v", p)
				}
				return nil
			}},
		{"limits", "[programs.a]\ncommand = \"x\"\nworkers = 10000\nmax_restarts = 0",
			func(f *File) error {
				if f.Programs[0].Workers != 10000 {
					return fmt.Errorf("workers %d", f.Programs[0].Workers)
				}
				return nil
			}},
		{"signals", "[programs.a]\ncommand = \"x\"\nstop_signal = \"SIGKILL\"\n[programs.b]\ncommand = \"x\"\nstop_signal = \"USR2\"",
			func(f *File) error {
				if f.Programs[0].StopSignal != "KILL" || f.Programs[1].StopSignal != "USR2" {
					return fmt.Errorf("%q %q", f.Programs[0].StopSignal, f.Programs[1].StopSignal)
				}
				return nil
			}},
		{"names", "[programs.0]\ncommand = \"x\"\n[programs.a_b-c]\ncommand = \"x\"\n[programs." + strings.Repeat("z", 63) + "]\ncommand = \"x\"",
			func(f *File) error {
				if len(f.Programs) != 3 {
					return fmt.Errorf("%d programs", len(f.Programs))
				}
				return nil
			}},
		{"inline and dotted", `programs.b.command = "b"
programs = { }`, nil}, // redefinition: rejected below; see the dotted case
		{"dotted", "programs.b.command = \"b\"\nprograms.b.args = []\nprograms.a = { command = \"a\", after = [\"b\"] }\n",
			func(f *File) error {
				if len(f.Programs) != 2 || f.Programs[0].Name != "b" || f.Programs[0].Line != 1 || f.Programs[1].Line != 3 || f.Programs[0].Args != nil {
					return fmt.Errorf("%+v", f.Programs)
				}
				return nil
			}},
		{"file order", "[programs.z]\ncommand = \"x\"\n[programs.a]\ncommand = \"x\"\n[programs.m]\ncommand = \"x\"\n[programs.z.env]\nK = \"v\"",
			func(f *File) error {
				var names []string
				for _, p := range f.Programs {
					names = append(names, p.Name)
				}
				if strings.Join(names, " ") != "z a m" || !reflect.DeepEqual(f.Programs[0].Env, []string{"K=v"}) {
					return fmt.Errorf("%v %v", names, f.Programs[0].Env)
				}
				return nil
			}},
		{"byte-order mark", "\uFEFF[programs.a]\ncommand = \"x\"\n",
			func(f *File) error {
				if f.Programs[0].Line != 1 {
					return fmt.Errorf("line %d", f.Programs[0].Line)
				}
				return nil
			}},
		{"CRLF", "# c\r\n[programs.a]\r\ncommand = \"x\"\r\n",
			func(f *File) error {
				if f.Programs[0].Line != 2 {
					return fmt.Errorf("line %d", f.Programs[0].Line)
				}
				return nil
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Parse("p.toml", []byte(tc.src))
			if tc.check == nil {
				if err == nil {
					t.Fatal("accepted")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := tc.check(f); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestErrors checks the full report for each rule: every problem, each
// naming the file, the line and the key, sorted by line.
func TestErrors(t *testing.T) {
	const p = "[programs.a]\ncommand = \"x\"\n" // a valid program on lines 1-2
	for _, tc := range []struct {
		name, src string
		kind      error
		want      []string
	}{
		{"empty file", "", ErrInvalid, []string{
			"p.toml: no programs: the file must have at least one [programs.NAME] table"}},
		{"empty programs", "# none\n[programs]\n", ErrInvalid, []string{
			"p.toml:2: programs: no programs: the file must have at least one [programs.NAME] table"}},
		{"unknown top-level key", p + "[foo]\nx = 1\n", ErrInvalid, []string{
			`p.toml:3: unknown key "foo": the only top-level key is "programs"`}},
		{"unknown top-level key before programs", "verbose = true\n" + p, ErrInvalid, []string{
			`p.toml:1: unknown key "verbose": the only top-level key is "programs"`}},
		{"unknown key", p + "\nwrokers = 2\n", ErrInvalid, []string{
			`p.toml:4: programs.a: unknown key "wrokers" (did you mean "workers"?)`}},
		{"unknown key, no suggestion", p + "colour = \"red\"\n", ErrInvalid, []string{
			`p.toml:3: programs.a: unknown key "colour"`}},
		{"unknown nested key", p + "[programs.a.health]\ninterval = \"1s\"\n", ErrInvalid, []string{
			`p.toml:3: programs.a: unknown key "health"`}},
		{"unknown dotted key", p + "limits.cpu = 2\n", ErrInvalid, []string{
			`p.toml:3: programs.a: unknown key "limits"`}},
		{"workers type", p + "workers = \"two\"\n", ErrInvalid, []string{
			`p.toml:3: programs.a.workers: must be an integer, got string "two"`}},
		{"workers float", p + "workers = 2.0\n", ErrInvalid, []string{
			`p.toml:3: programs.a.workers: must be an integer, got float 2`}},
		{"workers zero", p + "workers = 0\n", ErrInvalid, []string{
			`p.toml:3: programs.a.workers: must be at least 1, got 0`}},
		{"workers negative", p + "workers = -3\n", ErrInvalid, []string{
			`p.toml:3: programs.a.workers: must be at least 1, got -3`}},
		{"workers too many", p + "workers = 10001\n", ErrInvalid, []string{
			`p.toml:3: programs.a.workers: must be at most 10000, got 10001`}},
		{"negative count", p + "max_restarts = -1\nping_misses = -2\n", ErrInvalid, []string{
			`p.toml:3: programs.a.max_restarts: must be at least 0, got -1`,
			`p.toml:4: programs.a.ping_misses: must be at least 0, got -2`}},
		{"command type", "[programs.a]\ncommand = 1\n", ErrInvalid, []string{
			`p.toml:2: programs.a.command: must be a string, got integer 1`}},
		{"command missing", "[programs.a]\nargs = [\"x\"]\n", ErrInvalid, []string{
			`p.toml:1: programs.a: missing required key "command"`}},
		{"command empty", "[programs.a]\ncommand = \"\"\n", ErrInvalid, []string{
			`p.toml:2: programs.a.command: must not be empty`}},
		{"command NUL", "[programs.a]\ncommand = \"x\\u0000y\"\n", ErrInvalid, []string{
			`p.toml:2: programs.a.command: must not contain a NUL character`}},
		{"args type", p + "args = \"-v\"\n", ErrInvalid, []string{
			`p.toml:3: programs.a.args: must be an array of strings, got string "-v"`}},
		{"args element type", p + "args = [\"-n\", 3, true]\n", ErrInvalid, []string{
			`p.toml:3: programs.a.args[1]: must be a string, got integer 3`,
			`p.toml:3: programs.a.args[2]: must be a string, got boolean true`}},
		{"args escapes", p + "args = [\"%i\", \"%%\", \"%d\", \"50%\"]\n", ErrInvalid, []string{
			`p.toml:3: programs.a.args[2]: unknown escape "%d": "%i" is the worker's slot number and "%%" a literal %`,
			`p.toml:3: programs.a.args[3]: ends in a lone "%" (write "%%" for a literal %)`}},
		{"env type", p + "env = [\"A=1\"]\n", ErrInvalid, []string{
			`p.toml:3: programs.a.env: must be a table of strings, got an array`}},
		{"env values", p + "[programs.a.env]\nA = 1\nB = \"%x\"\n\"C=D\" = \"v\"\nPAIRVISOR_FD = \"3\"\nOK = \"%i\"\n", ErrInvalid, []string{
			`p.toml:4: programs.a.env.A: must be a string, got integer 1`,
			`p.toml:5: programs.a.env.B: unknown escape "%x": "%i" is the worker's slot number and "%%" a literal %`,
			`p.toml:6: programs.a.env."C=D": an environment variable's name must be neither empty nor contain "=" or NUL`,
			`p.toml:7: programs.a.env.PAIRVISOR_FD: PAIRVISOR_ variables are the supervisor's own and cannot be set`}},
		{"dir type", p + "dir = [\"/\"]\n", ErrInvalid, []string{
			`p.toml:3: programs.a.dir: must be a string, got an array`}},
		{"ready", p + "ready = \"systemd\"\n", ErrInvalid, []string{
			`p.toml:3: programs.a.ready: must be "hello", "notify" or "started", got "systemd"`}},
		{"restart", p + "restart = \"on_failure\"\n", ErrInvalid, []string{
			`p.toml:3: programs.a.restart: must be "always", "on-failure" or "never", got "on_failure"`}},
		{"stop_signal", p + "stop_signal = \"term\"\n", ErrInvalid, []string{
			`p.toml:3: programs.a.stop_signal: must be "TERM", "INT", "HUP", "QUIT", "USR1", "USR2" or "KILL" (with or without SIG), got "term"`}},
		{"stop_signal number", p + "stop_signal = 15\n", ErrInvalid, []string{
			`p.toml:3: programs.a.stop_signal: must be a string, got integer 15`}},
		{"duration unit", p + "stop_timeout = \"10\"\n", ErrInvalid, []string{
			`p.toml:3: programs.a.stop_timeout: must be a duration such as "1.5s" or "100ms", got "10"`}},
		{"duration integer", p + "stop_timeout = 10\n", ErrInvalid, []string{
			`p.toml:3: programs.a.stop_timeout: must be a duration string such as "1.5s" or "100ms", got integer 10`}},
		{"duration negative", p + "backoff_min = \"-1s\"\n", ErrInvalid, []string{
			`p.toml:3: programs.a.backoff_min: must not be negative, got "-1s"`}},
		{"duration datetime", p + "healthy_after = 1979-05-27T07:32:00Z\n", ErrInvalid, []string{
			`p.toml:3: programs.a.healthy_after: must be a duration string such as "1.5s" or "100ms", got a date-time`}},
		{"backoff order", p + "backoff_min = \"2s\"\nbackoff_max = \"1s\"\n", ErrInvalid, []string{
			`p.toml:4: programs.a.backoff_max: must not be less than backoff_min (2s), got 1s`}},
		{"start_secs without started", p + "start_secs = \"1s\"\n", ErrInvalid, []string{
			`p.toml:3: programs.a.start_secs: only applies with ready = "started" (ready is "hello")`}},
		{"ping without hello", p + "ready = \"notify\"\nping_interval = \"1s\"\nping_misses = 2\n", ErrInvalid, []string{
			`p.toml:4: programs.a.ping_interval: only applies with ready = "hello" (ready is "notify")`,
			`p.toml:5: programs.a.ping_misses: only applies with ready = "hello" (ready is "notify")`}},
		{"health without health_cmd", p + "health_interval = \"1s\"\n", ErrInvalid, []string{
			`p.toml:3: programs.a.health_interval: only applies with health_cmd`}},
		{"health_cmd string", p + "health_cmd = \"pg_isready -q\"\n", ErrInvalid, []string{
			`p.toml:3: programs.a.health_cmd: must be an array (the command and its arguments, run without a shell), got string "pg_isready -q"; for a shell command write ["sh", "-c", "..."]`}},
		{"health_cmd empty", p + "health_cmd = []\n", ErrInvalid, []string{
			`p.toml:3: programs.a.health_cmd: must name a command: its first element must not be empty`}},
		{"program not a table", "[programs]\na = 1\n", ErrInvalid, []string{
			`p.toml:2: programs.a: must be a table ([programs.a]), got integer 1`}},
		{"programs not a table", "programs = \"a\"\n", ErrInvalid, []string{
			`p.toml:1: programs: must be a table of programs ([programs.NAME]), got string "a"`}},
		{"array of tables", "[[programs]]\ncommand = \"x\"\n", ErrInvalid, []string{
			`p.toml:1: programs: must be a table of programs ([programs.NAME]), got an array of tables`}},
		{"program array of tables", "[[programs.a]]\ncommand = \"x\"\n", ErrInvalid, []string{
			`p.toml:1: programs.a: must be a table ([programs.a]), got an array of tables`}},
		{"names", "[programs.Web]\ncommand = \"x\"\n[programs.-x]\ncommand = \"x\"\n[programs.\"a.b\"]\ncommand = \"x\"\n[programs." + strings.Repeat("z", 64) + "]\ncommand = \"x\"\n", ErrInvalid, []string{
			`p.toml:1: programs.Web: invalid program name "Web": want 1 to 63 of a-z, 0-9, "_" and "-", beginning with a letter or digit`,
			`p.toml:3: programs.-x: invalid program name "-x": want 1 to 63 of a-z, 0-9, "_" and "-", beginning with a letter or digit`,
			`p.toml:5: programs."a.b": invalid program name "a.b": want 1 to 63 of a-z, 0-9, "_" and "-", beginning with a letter or digit`,
			`p.toml:7: programs.` + strings.Repeat("z", 64) + `: invalid program name "` + strings.Repeat("z", 64) + `": want 1 to 63 of a-z, 0-9, "_" and "-", beginning with a letter or digit`}},
		{"after type", p + "after = \"b\"\n", ErrInvalid, []string{
			`p.toml:3: programs.a.after: must be an array of program names, got string "b"`}},
		{"after element type", p + "after = [1, \"a\"]\n", ErrInvalid, []string{
			`p.toml:3: programs.a.after: a program cannot start after itself`,
			`p.toml:3: programs.a.after[0]: must be a string, got integer 1`}},
		{"after missing", p + "\nafter = [\"dbb\"]\n", ErrInvalid, []string{
			`p.toml:4: programs.a.after: no program named "dbb"`}},
		{"after self", p + "after = [\"a\"]\n", ErrInvalid, []string{
			`p.toml:3: programs.a.after: a program cannot start after itself`}},
		{"after twice", p + "after = [\"b\", \"b\"]\n[programs.b]\ncommand = \"x\"\n", ErrInvalid, []string{
			`p.toml:3: programs.a.after[1]: "b" is listed twice`}},
		{"cycle of 2", "[programs.web]\ncommand = \"x\"\nafter = [\"api\"]\n[programs.api]\ncommand = \"x\"\nafter = [\"web\"]\n", ErrInvalid, []string{
			`p.toml:3: programs.web.after: dependency cycle: web -> api -> web`}},
		{"cycle of 3", `[programs.a]
command = "x"
after = ["b"]
[programs.b]
command = "x"
after = ["c"]
[programs.c]
command = "x"
after = ["a"]
[programs.d]
command = "x"
after = ["c"]
`, ErrInvalid, []string{
			`p.toml:3: programs.a.after: dependency cycle: a -> b -> c -> a`}},
		{"two cycles", `[programs.a]
command = "x"
after = ["b"]
[programs.b]
command = "x"
after = ["a"]
[programs.c]
command = "x"
after = ["d", "a"]
[programs.d]
command = "x"
after = ["e"]
[programs.e]
command = "x"
after = ["c"]
`, ErrInvalid, []string{
			`p.toml:3: programs.a.after: dependency cycle: a -> b -> a`,
			`p.toml:9: programs.c.after: dependency cycle: c -> d -> e -> c`}},
		{"syntax", "[programs.a]\ncommand = \"x\nworkers = 1\n", ErrSyntax, []string{
			`p.toml:2:13: strings cannot contain newlines`}},
		{"syntax end of line", "[programs.a\ncommand = \"x\"\n", ErrSyntax, []string{
			`p.toml:1:12: expected '.' or ']' to end table name, but got '\n' instead`}},
		{"syntax duplicate", p + "command = \"y\"\n", ErrSyntax, []string{
			`p.toml:3:1: Key 'programs.a.command' has already been defined.`}},
		{"many problems, sorted", `[programs.db]
command = "python3"
workers = 0
wrokers = 2
ready = "notify"
ping_interval = "1s"
[programs.web]
after = ["dbb", "web"]
[foo]
`, ErrInvalid, []string{
			`p.toml:3: programs.db.workers: must be at least 1, got 0`,
			`p.toml:4: programs.db: unknown key "wrokers" (did you mean "workers"?)`,
			`p.toml:6: programs.db.ping_interval: only applies with ready = "hello" (ready is "notify")`,
			`p.toml:7: programs.web: missing required key "command"`,
			`p.toml:8: programs.web.after: a program cannot start after itself`,
			`p.toml:8: programs.web.after: no program named "dbb"`,
			`p.toml:9: unknown key "foo": the only top-level key is "programs"`}},
		{"inline tables", "programs.a = { command = \"x\",\n  workers = 0 }\nprograms.b = { command = \"y\", env = {\n  A = 1 } }\n", ErrInvalid, []string{
			`p.toml:2: programs.a.workers: must be at least 1, got 0`,
			`p.toml:4: programs.b.env.A: must be a string, got integer 1`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Parse("p.toml", []byte(tc.src))
			if err == nil {
				t.Fatalf("accepted: %+v", f)
			}
			if f != nil {
				t.Errorf("a File with the error: %+v", f)
			}
			if got := strings.Split(err.Error(), "\n"); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
			if !errors.Is(err, tc.kind) {
				t.Errorf("not %v", tc.kind)
			}
			var es Errors
			if !errors.As(err, &es) || len(es) != len(tc.want) {
				t.Fatalf("not Errors of %d: %#v", len(tc.want), err)
			}
			for _, e := range es {
				if e.File != "p.toml" || e.Line == 0 && tc.name != "empty file" || e.Key == "" && e.Err == ErrInvalid && !strings.Contains(e.Msg, "top-level") && tc.name != "empty file" {
					t.Errorf("%#v: missing file, line or key", e)
				}
			}
		})
	}
}

// TestTooMany: the limits on the number of programs, the file's size and
// the number of problems reported.
func TestTooMany(t *testing.T) {
	var b strings.Builder
	for i := range MaxPrograms + 1 {
		fmt.Fprintf(&b, "[programs.p%d]\ncommand = \"x\"\n", i)
	}
	_, err := Parse("p.toml", []byte(b.String()))
	if want := "p.toml:1: programs: 1001 programs, more than the limit of 1000"; err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}

	big := "[programs.a]\ncommand = \"x\"\n#" + strings.Repeat("x", MaxFileSize) + "\n"
	_, err = Parse("p.toml", []byte(big))
	if !errors.Is(err, ErrTooLarge) || err.Error() != "p.toml: the file is larger than the limit of 1048576 bytes" {
		t.Errorf("got %v", err)
	}

	b.Reset()
	b.WriteString("[programs.a]\ncommand = \"x\"\n")
	for i := range MaxErrors + 10 {
		fmt.Fprintf(&b, "unknown%d = 1\n", i)
	}
	_, err = Parse("p.toml", []byte(b.String()))
	var es Errors
	if !errors.As(err, &es) || len(es) != MaxErrors+1 {
		t.Fatalf("got %d errors: %v", len(es), err)
	}
	if es[0].Line != 3 || es[MaxErrors-1].Line != MaxErrors+2 || es[MaxErrors].Error() != "p.toml: 10 more problems not shown" {
		t.Errorf("first %v, last shown %v, then %v", es[0], es[MaxErrors-1], es[MaxErrors])
	}
}
