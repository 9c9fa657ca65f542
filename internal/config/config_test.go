package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "pairvisor.toml")
	if err := os.WriteFile(path, []byte(exampleFile), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if f.Path != path || len(f.Programs) != 3 {
		t.Errorf("Path %q, %d programs", f.Path, len(f.Programs))
	}

	if _, err := Load(filepath.Join(dir, "missing.toml")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), dir) {
		t.Errorf("directory: %v", err)
	}

	// Errors name the path given; a file one byte over the limit is
	// refused without being parsed.
	bad := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(bad, []byte("[programs.a]\ncommand = \"x\"\nworkers = 0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(bad); err == nil || err.Error() != bad+":3: programs.a.workers: must be at least 1, got 0" {
		t.Errorf("got %v", err)
	}
	big := filepath.Join(dir, "big.toml")
	data := []byte("[programs.a]\ncommand = \"x\"\n#" + strings.Repeat("x", MaxFileSize))
	if err := os.WriteFile(big, data[:MaxFileSize+1], 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(big); !errors.Is(err, ErrTooLarge) || !strings.HasPrefix(err.Error(), big+": ") {
		t.Errorf("got %v", err)
	}
	if err := os.WriteFile(big, data[:MaxFileSize], 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(big); err != nil {
		t.Errorf("a file of exactly MaxFileSize bytes: %v", err)
	}
}

// names returns the groups of StartOrder as one string: "a | b c | d".
func names(groups [][]string) string {
	s := make([]string, len(groups))
	for i, g := range groups {
		s[i] = strings.Join(g, " ")
	}
	return strings.Join(s, " | ")
}

func TestStartOrder(t *testing.T) {
	for _, tc := range []struct{ name, src, want string }{
		{"diamond", `
[programs.top]
command = "x"
after = ["left", "right"]
[programs.left]
command = "x"
after = ["base"]
[programs.right]
command = "x"
after = ["base"]
[programs.base]
command = "x"
[programs.loner]
command = "x"
`, "base loner | left right | top"},
		{"chain written backwards", `
[programs.c]
command = "x"
after = ["b"]
[programs.b]
command = "x"
after = ["a"]
[programs.a]
command = "x"
`, "a | b | c"},
		{"uneven", `
[programs.d]
command = "x"
after = ["a", "c"]
[programs.a]
command = "x"
[programs.b]
command = "x"
after = ["a"]
[programs.c]
command = "x"
after = ["b"]
`, "a | b | c | d"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Parse("p.toml", []byte(tc.src))
			if err != nil {
				t.Fatal(err)
			}
			if got := names(f.StartOrder()); got != tc.want {
				t.Errorf("got %s, want %s", got, tc.want)
			}
		})
	}

	// A File not from Parse: the cycle and what follows it come last;
	// unknown names are ignored.
	f := &File{Programs: []Program{
		{Name: "x", After: []string{"y"}},
		{Name: "y", After: []string{"x"}},
		{Name: "z", After: []string{"ghost"}},
		{Name: "w", After: []string{"x"}},
	}}
	if got, want := names(f.StartOrder()), "z | x y w"; got != want {
		t.Errorf("cycle: got %s, want %s", got, want)
	}
	if got := (&File{}).StartOrder(); len(got) != 0 {
		t.Errorf("empty file: %v", got)
	}
}

func TestCompare(t *testing.T) {
	old := `# v1
[programs.db]
command = "db"
args = ["-p", "54%i"]
[programs.web]
command = "web"
after = ["db", "cache"]
[programs.cache]
command = "cache"
[programs.gone]
command = "gone"
`
	// Reordered programs, different comments and layout, after in
	// another order, an explicit default for ready, an empty args for an
	// absent one: unchanged. cache gains a worker; gone goes; new comes.
	new := `# v2: rewritten
programs.db = { command = "db", args = ["-p", "54%i"] }

[programs.new]
command = "new"

[programs.cache]   # now two
command = "cache"
workers = 2

[programs.web]
after = ["cache", "db"]   # same set
command = "web"
ready = "hello"
workers = 1
args = []
`
	o, err := Parse("old.toml", []byte(old))
	if err != nil {
		t.Fatal(err)
	}
	n, err := Parse("new.toml", []byte(new))
	if err != nil {
		t.Fatal(err)
	}
	want := Diff{Added: []string{"new"}, Removed: []string{"gone"}, Changed: []string{"cache"}, Unchanged: []string{"db", "web"}}
	if got := Compare(o, n); !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
	// Comments only: every program unchanged.
	commented := strings.ReplaceAll(strings.ReplaceAll(old, "\n", "   # note\n"), "[programs.web]", "# [programs.webb]\n\n[programs.web]")
	c, err := Parse("commented.toml", []byte(commented))
	if err != nil {
		t.Fatal(err)
	}
	if got := Compare(o, c); !reflect.DeepEqual(got, Diff{Unchanged: []string{"db", "web", "cache", "gone"}}) {
		t.Errorf("comments only: %+v", got)
	}
	if got := Compare(n, n); len(got.Unchanged) != 4 || got.Added != nil || got.Removed != nil || got.Changed != nil {
		t.Errorf("a file against itself: %+v", got)
	}
	if got := Compare(nil, o); !reflect.DeepEqual(got, Diff{Added: []string{"db", "web", "cache", "gone"}}) {
		t.Errorf("from nothing: %+v", got)
	}
	if got := Compare(o, nil); !reflect.DeepEqual(got, Diff{Removed: []string{"db", "web", "cache", "gone"}}) {
		t.Errorf("to nothing: %+v", got)
	}
}

// TestCompareEveryField: a change to any field of Program but Line (and
// Name, which makes it another program) makes it changed, so a field
// added later is compared without anyone remembering to.
func TestCompareEveryField(t *testing.T) {
	base := Program{Name: "a", Command: "x", Workers: 1, Ready: ReadyHello, Restart: RestartOnFailure, StopSignal: "TERM",
		Args: []string{"1"}, Env: []string{"A=1"}, HealthCmd: []string{"h"}, After: []string{"b"}}
	typ := reflect.TypeOf(base)
	for i := range typ.NumField() {
		field := typ.Field(i)
		if field.Name == "Name" {
			continue
		}
		changed := base
		v := reflect.ValueOf(&changed).Elem().Field(i)
		switch field.Type {
		case reflect.TypeOf(""):
			v.SetString(v.String() + "!")
		case reflect.TypeOf(0):
			v.SetInt(v.Int() + 1)
		case reflect.TypeOf(time.Duration(0)):
			v.SetInt(v.Int() + 1)
		case reflect.TypeOf([]string(nil)):
			v.Set(reflect.ValueOf([]string{"other"}))
		case reflect.TypeOf([]Listen(nil)):
			v.Set(reflect.ValueOf([]Listen{{Name: "x", Network: "tcp", Address: ":1"}}))
		default:
			t.Fatalf("field %s: type %v not covered by this test", field.Name, field.Type)
		}
		d := Compare(&File{Programs: []Program{base}}, &File{Programs: []Program{changed}})
		wantChanged := field.Name != "Line"
		if got := len(d.Changed) == 1; got != wantChanged {
			t.Errorf("field %s: changed %v, want %v (%+v)", field.Name, got, wantChanged, d)
		}
	}
}

// TestFormat: Format writes a file that Parse reads back to the same
// programs in the same order.
func TestFormat(t *testing.T) {
	f, err := Parse("p.toml", []byte(exampleFile))
	if err != nil {
		t.Fatal(err)
	}
	tricky := Program{Name: "t", Command: "a \"quoted\" \\ cmd\twith\ttabs\nand\x01control\x7f and ünïcode",
		Args: []string{"", "%%", "'single'"}, Env: []string{"=weird?=no", "K=v=w"}[1:], Workers: 1,
		Ready: ReadyHello, Restart: RestartOnFailure, StopSignal: "TERM"}
	f.Programs = append(f.Programs, tricky)
	out := f.Format()
	g, err := Parse("formatted.toml", out)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if len(g.Programs) != len(f.Programs) {
		t.Fatalf("%d programs, want %d\n%s", len(g.Programs), len(f.Programs), out)
	}
	for i := range f.Programs {
		if !same(f.Programs[i], g.Programs[i]) || f.Programs[i].Name != g.Programs[i].Name {
			t.Errorf("program %d:\n%+v\n%+v", i, f.Programs[i], g.Programs[i])
		}
	}
}
