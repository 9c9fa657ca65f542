package config

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
)

// trickyTOML are valid documents that a careless scanner would get
// wrong: text that looks like keys or tables inside strings, comments
// and arrays; every kind of string and key; nested inline tables.
var trickyTOML = []string{
	`a = 1`,
	"[t]\r\nk = 'v' # [not.a.table]\r\nk2 = \"\"\"\n[fake]\nx = 1\n\"\"\"\n",
	`s1 = """one "" two ""\" three"""""
s2 = '''lit '' ''''
[  spaced . "quoted.dot" . 'lit' ]
"k\u0041\t" = 1
'' = 2
a.b . c = 4
`,
	`arr = [ # comment [x]
  "a", 'b', """c""", '''d''',
  [1, [2, {k = 3}]],
  { x = { y = 1, z.w = 2 } },
] # after
dt = 1979-05-27 07:32:00Z
ld = 1979-05-27
lt = 07:32:00
f = -0.5e+3
i = 0xdead_beef
b = true
inf = -inf
`,
	`[[fruits]]
name = "apple"
[fruits.physical]
color = "red"
[[fruits.varieties]]
name = "red delicious"
[[fruits]]
name = "banana"
`,
	"tbl = {\n  a = 1, # TOML 1.1: newlines and comments\n  b = 2,\n}\nesc = \"\\e\\x41\\U0001F600\"\n\"\\x41\" = 1\n",
	"\uFEFF[programs.a]\ncommand = 'x'\n",
	"k = 'a#b' # c\n\n\n[x]  # comment\n  [x.y]\n",
}

// TestLocateMatchesLibrary: locate lists the keys the TOML library
// lists, in its order, and finds each of them.
func TestLocateMatchesLibrary(t *testing.T) {
	for i, doc := range trickyTOML {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			var m map[string]any
			md, err := toml.Decode(doc, &m)
			if err != nil {
				t.Fatalf("the library refuses it: %v", err)
			}
			if err := checkLocate([]byte(doc), md.Keys()); err != nil {
				t.Error(err)
			}
		})
	}
}

// checkLocate compares locate's keys with want (the library's), and
// checks that each has a position.
func checkLocate(data []byte, want []toml.Key) error {
	ps := locate(stripBOM(data))
	if !reflect.DeepEqual(ps.keys, want) && !(len(ps.keys) == 0 && len(want) == 0) {
		return fmt.Errorf("locate: keys\n%q\nlibrary:\n%q", ps.keys, want)
	}
	for _, k := range want {
		if ps.line(k) == 0 {
			return fmt.Errorf("no position for %q", k)
		}
	}
	return nil
}

// TestLocatePositions checks the lines and columns found.
func TestLocatePositions(t *testing.T) {
	doc := "# head\n" + // 1
		"top = 1\n" + // 2
		"[  a.\"b c\" ]\n" + // 3
		"  k = { x = 1,\n" + // 4
		"    y.z = [{w = 2}] }\n" + // 5
		"s = \"\"\"\n[no]\nno = 1\n\"\"\"\n" + // 6-9
		"[[arr]]\n" + // 10
		"q = 1\n" // 11
	want := map[string]position{
		"top":             {2, 1},
		"a":               {3, 1},
		`a."b c"`:         {3, 1},
		`a."b c".k`:       {4, 3},
		`a."b c".k.x`:     {4, 9},
		`a."b c".k.y`:     {5, 5},
		`a."b c".k.y.z`:   {5, 5},
		`a."b c".k.y.z.w`: {5, 13},
		`a."b c".s`:       {6, 1},
		"arr":             {10, 1},
		"arr.q":           {11, 1},
	}
	ps := locate([]byte(doc))
	for k, p := range want {
		if got := ps.at[k]; got != p {
			t.Errorf("%s at %v, want %v", k, got, p)
		}
	}
	if len(ps.at) != len(want) {
		t.Errorf("found %d keys, want %d: %v", len(ps.at), len(want), ps.at)
	}
	var m map[string]any
	md, err := toml.Decode(doc, &m)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkLocate([]byte(doc), md.Keys()); err != nil {
		t.Error(err)
	}
}

// TestLocateStopsWhenLost: on what is not TOML, locate stops rather
// than guess; the keys before that point keep their positions.
func TestLocateStopsWhenLost(t *testing.T) {
	ps := locate([]byte("a = 1\nb = \"unterminated\nc = 3\n"))
	if ps.at["a"] != (position{1, 1}) || ps.at["c"] != (position{}) {
		t.Errorf("%v", ps.at)
	}
}

// FuzzParse: Parse never panics; what it accepts is valid (names, no
// cycles, every program located) and survives Format and Parse again
// unchanged; what it refuses, it refuses with Errors that name the file
// and wrap a sentinel. For every document the library accepts, locate
// agrees with the library's list of keys.
func FuzzParse(f *testing.F) {
	f.Add([]byte(exampleFile))
	for _, doc := range trickyTOML {
		f.Add([]byte(doc))
	}
	f.Add([]byte("[programs.a]\ncommand = \"x\"\nafter = [\"b\"]\n[programs.b]\ncommand = \"y\"\nafter = [\"a\"]\n"))
	f.Add([]byte("programs.a = { command = \"x\", env = { K = \"%i\" }, args = [\"%%\"] }\n"))
	f.Add([]byte("[programs.a]\ncommand = \"x\"\nworkers = \"two\"\nfoo = 1\n"))
	f.Add([]byte("[programs.\"a\\u0062\"]\ncommand = '''x\ny'''\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 64<<10 {
			return
		}
		var m map[string]any
		if md, err := toml.Decode(string(data), &m); err == nil {
			if err := checkLocate(data, md.Keys()); err != nil {
				t.Fatal(err)
			}
		}

		file, err := Parse("f.toml", data)
		if err != nil {
			var es Errors
			if !errors.As(err, &es) || len(es) == 0 {
				t.Fatalf("not Errors: %#v", err)
			}
			for _, e := range es {
				if e.File != "f.toml" || !(errors.Is(e, ErrSyntax) || errors.Is(e, ErrInvalid) || errors.Is(e, ErrTooLarge)) {
					t.Fatalf("%#v", e)
				}
				if e.Err == ErrInvalid && e.Key != "" && e.Line == 0 {
					t.Fatalf("no line: %v", e)
				}
			}
			return
		}
		checkValid(t, file)
		again, err := Parse("again.toml", file.Format())
		if err != nil {
			t.Fatalf("Format's output refused: %v\n%s", err, file.Format())
		}
		if len(again.Programs) != len(file.Programs) {
			t.Fatalf("%d programs, then %d", len(file.Programs), len(again.Programs))
		}
		for i, p := range file.Programs {
			if q := again.Programs[i]; p.Name != q.Name || !same(p, q) || !reflect.DeepEqual(p.After, q.After) {
				t.Fatalf("program %d:\n%+v\n%+v", i, p, q)
			}
		}
	})
}

// checkValid checks what Parse promises of a file it accepts.
func checkValid(t *testing.T, f *File) {
	t.Helper()
	if len(f.Programs) == 0 || len(f.Programs) > MaxPrograms {
		t.Fatalf("%d programs", len(f.Programs))
	}
	seen := map[string]bool{}
	for _, p := range f.Programs {
		if !validName(p.Name) || seen[p.Name] || p.Command == "" || p.Line == 0 ||
			p.Workers < 1 || p.Workers > MaxWorkers || p.Ready == "" || p.Restart == "" || p.StopSignal == "" {
			t.Fatalf("invalid program accepted: %+v", p)
		}
		seen[p.Name] = true
		for _, s := range append(append(append([]string{p.Command, p.Dir}, p.Args...), p.Env...), p.HealthCmd...) {
			if strings.IndexByte(s, 0) >= 0 {
				t.Fatalf("NUL accepted: %+v", p)
			}
		}
	}
	// StartOrder places every program once, after all it names.
	placed := map[string]bool{}
	for _, g := range f.StartOrder() {
		for _, n := range g {
			p, _ := f.Program(n)
			for _, a := range p.After {
				if !placed[a] {
					t.Fatalf("%s placed before %s, which it starts after: %v", n, a, f.StartOrder())
				}
			}
		}
		for _, n := range g {
			if placed[n] {
				t.Fatalf("%s placed twice", n)
			}
			placed[n] = true
		}
	}
	if len(placed) != len(f.Programs) {
		t.Fatalf("StartOrder placed %d of %d", len(placed), len(f.Programs))
	}
}
