package config

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors. Test for them with errors.Is on what [Parse] and
// [Load] return: every [Error] wraps one of them.
var (
	// ErrSyntax: the file is not valid TOML. Nothing else was checked.
	ErrSyntax = errors.New("config: invalid TOML")

	// ErrInvalid: the file is valid TOML but not a valid configuration
	// (an unknown key, a value of the wrong type or out of range, a
	// dependency on a missing program, a dependency cycle, ...).
	ErrInvalid = errors.New("config: invalid configuration")

	// ErrTooLarge: the file is bigger than [MaxFileSize].
	ErrTooLarge = errors.New("config: file too large")
)

// Error is one problem found in a configuration file. Its message reads
// "FILE:LINE:COL: KEY: MSG", without the parts that are unknown or do
// not apply: COL is known only for syntax errors, KEY is empty for a
// problem with the file as a whole.
type Error struct {
	File string // the name given to Parse, or the path given to Load
	Line int    // 1-based; 0 when unknown
	Col  int    // 1-based byte column; 0 when unknown
	Key  string // the dotted key, e.g. "programs.web.workers"
	Msg  string
	Err  error // ErrSyntax, ErrInvalid or ErrTooLarge
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
		if e.Col > 0 {
			fmt.Fprintf(&b, ":%d", e.Col)
		}
	}
	b.WriteString(": ")
	if e.Key != "" {
		b.WriteString(e.Key)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Errors is every problem [Parse] found in one file, sorted by line
// (problems of the file as a whole first), at most [MaxErrors] of them
// and then one saying how many more there were. Its message is theirs,
// one a line. errors.Is and errors.As see each of them.
type Errors []*Error

func (es Errors) Error() string {
	msgs := make([]string, len(es))
	for i, e := range es {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "\n")
}

func (es Errors) Unwrap() []error {
	errs := make([]error, len(es))
	for i, e := range es {
		errs[i] = e
	}
	return errs
}
