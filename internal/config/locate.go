package config

import (
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/BurntSushi/toml"
)

// The TOML library reports where a syntax error is, but not where each
// key is written: its MetaData keeps key positions unexported. locate
// finds them with a scanner of its own, run only on documents the
// library has already accepted, so it need only follow valid TOML. It
// lists the keys in the order MetaData.Keys does, which the tests and
// FuzzParse check, so that the two cannot drift apart unnoticed. Where
// it gets lost (it should not), it stops: keys after that point have no
// position and their problems are reported without a line number,
// never with a wrong one.

// position is where a key is written: 1-based line and byte column.
type position struct{ line, col int }

// positions is what locate found.
type positions struct {
	// keys lists each key in document order, as MetaData.Keys does:
	// every table header, and every key of a key/value pair with its
	// full path (table, dotted key, enclosing inline tables).
	keys []toml.Key
	// at maps a key (by toml.Key.String) to where it is first written,
	// or, for a table that is only implied (by [a.b.c] or a.b.c = 1),
	// where the first key that implies it is written.
	at map[string]position
}

// line returns the line where key is first written, or 0.
func (ps *positions) line(key toml.Key) int { return ps.at[key.String()].line }

// locate scans data, which the TOML library accepted (less its
// byte-order mark: see stripBOM).
func locate(data []byte) *positions {
	s := &scanner{data: data, lines: newLines(data), ps: &positions{at: make(map[string]position)}}
	s.document()
	return s.ps
}

// stripBOM returns data without the byte-order mark the TOML library
// skips; the offsets in its errors count from there.
func stripBOM(data []byte) []byte {
	for _, bom := range []string{"\xff\xfe", "\xfe\xff", "\xef\xbb\xbf"} {
		if strings.HasPrefix(string(data), bom) {
			return data[len(bom):]
		}
	}
	return data
}

// lines holds the byte offsets where lines 2, 3, ... of a text begin.
type lines []int

func newLines(data []byte) lines {
	var l lines
	for i, c := range data {
		if c == '\n' {
			l = append(l, i+1)
		}
	}
	return l
}

// pos converts byte offset off to a line and column.
func (l lines) pos(off int) position {
	n := sort.SearchInts(l, off+1) // lines that began at or before off, less the first
	start := 0
	if n > 0 {
		start = l[n-1]
	}
	return position{line: n + 1, col: off - start + 1}
}

// scanner is locate's state. Every method either advances i or reports
// failure, so that the scan ends.
type scanner struct {
	data  []byte
	i     int
	lines lines
	ps    *positions
}

func (s *scanner) eof() bool  { return s.i >= len(s.data) }
func (s *scanner) peek() byte { return s.data[s.i] }

// emit records key, written at byte offset off, and the tables it
// implies.
func (s *scanner) emit(key toml.Key, off int) {
	s.ps.keys = append(s.ps.keys, key)
	p := s.lines.pos(off)
	for n := 1; n <= len(key); n++ {
		k := key[:n].String()
		if _, ok := s.ps.at[k]; !ok {
			s.ps.at[k] = p
		}
	}
}

// document scans the whole input.
func (s *scanner) document() {
	var table toml.Key
	for {
		s.skipBlank(true)
		if s.eof() {
			return
		}
		off := s.i
		if s.peek() == '[' {
			s.i++
			array := !s.eof() && s.peek() == '['
			if array {
				s.i++
			}
			key, ok := s.key()
			if !ok || !s.expect(']') || (array && !s.expect(']')) {
				return
			}
			table = key
			s.emit(key, off)
			continue
		}
		key, ok := s.key()
		if !ok || !s.expect('=') {
			return
		}
		full := join(table, key)
		s.emit(full, off)
		if !s.value(full) {
			return
		}
	}
}

// join returns a new key: a followed by b.
func join(a, b toml.Key) toml.Key {
	k := make(toml.Key, 0, len(a)+len(b))
	return append(append(k, a...), b...)
}

// skipBlank skips spaces, tabs and comments, and newlines too if nl.
func (s *scanner) skipBlank(nl bool) {
	for !s.eof() {
		switch s.peek() {
		case ' ', '\t':
			s.i++
		case '\r', '\n':
			if !nl {
				return
			}
			s.i++
		case '#':
			for !s.eof() && s.peek() != '\n' {
				s.i++
			}
		default:
			return
		}
	}
}

// expect skips spaces and tabs, then consumes c.
func (s *scanner) expect(c byte) bool {
	s.skipBlank(false)
	if s.eof() || s.peek() != c {
		return false
	}
	s.i++
	return true
}

// key consumes a (dotted) key and the spaces around it.
func (s *scanner) key() (toml.Key, bool) {
	var key toml.Key
	for {
		s.skipBlank(false)
		if s.eof() {
			return nil, false
		}
		var part string
		var ok bool
		switch s.peek() {
		case '"':
			part, ok = s.basic()
		case '\'':
			part, ok = s.literal()
		default:
			start := s.i
			for !s.eof() && isBare(s.peek()) {
				s.i++
			}
			part, ok = string(s.data[start:s.i]), s.i > start
		}
		if !ok {
			return nil, false
		}
		key = append(key, part)
		s.skipBlank(false)
		if s.eof() || s.peek() != '.' {
			return key, true
		}
		s.i++
	}
}

// isBare reports whether c may be part of a bare key. Valid TOML has
// only A-Za-z0-9_- there; anything else that cannot end a key is taken
// too, so that an unforeseen extension of bare keys is not a stop.
func isBare(c byte) bool {
	switch c {
	case ' ', '\t', '\r', '\n', '.', '=', ']', '[', '"', '\'', '#', ',', '{', '}':
		return false
	}
	return true
}

// value consumes a value; path is the key it is the value of (the
// prefix of the keys of an inline table).
func (s *scanner) value(path toml.Key) bool {
	s.skipBlank(false)
	if s.eof() {
		return false
	}
	switch s.peek() {
	case '"':
		if s.has(`"""`) {
			return s.multiline('"')
		}
		_, ok := s.basic()
		return ok
	case '\'':
		if s.has(`'''`) {
			return s.multiline('\'')
		}
		_, ok := s.literal()
		return ok
	case '[':
		s.i++
		for {
			s.skipBlank(true)
			if s.eof() {
				return false
			}
			if s.peek() == ']' {
				s.i++
				return true
			}
			if !s.value(path) {
				return false
			}
			s.skipBlank(true)
			if !s.eof() && s.peek() == ',' {
				s.i++
			}
		}
	case '{':
		s.i++
		for {
			s.skipBlank(true) // newlines: TOML 1.1
			if s.eof() {
				return false
			}
			if s.peek() == '}' {
				s.i++
				return true
			}
			off := s.i
			key, ok := s.key()
			if !ok || !s.expect('=') {
				return false
			}
			full := join(path, key)
			s.emit(full, off)
			if !s.value(full) {
				return false
			}
			s.skipBlank(true)
			if !s.eof() && s.peek() == ',' {
				s.i++
			}
		}
	}
	// A number, boolean or date-time: up to what ends it (a local
	// date-time may contain a space).
	start := s.i
	for !s.eof() && !strings.ContainsRune(",]}#\r\n", rune(s.peek())) {
		s.i++
	}
	return s.i > start
}

func (s *scanner) has(prefix string) bool {
	return strings.HasPrefix(string(s.data[s.i:min(len(s.data), s.i+len(prefix))]), prefix)
}

// multiline consumes a multi-line string delimited by three q.
func (s *scanner) multiline(q byte) bool {
	s.i += 3
	for !s.eof() {
		c := s.peek()
		switch {
		case c == '\\' && q == '"':
			s.i += 2
		case c == q && s.has(string([]byte{q, q, q})):
			s.i += 3
			// Up to two more quotes belong to the content.
			for n := 0; n < 2 && !s.eof() && s.peek() == q; n++ {
				s.i++
			}
			return true
		default:
			s.i++
		}
	}
	return false
}

// literal consumes a single-line literal string.
func (s *scanner) literal() (string, bool) {
	s.i++
	start := s.i
	for !s.eof() && s.peek() != '\'' && s.peek() != '\n' {
		s.i++
	}
	if s.eof() || s.peek() != '\'' {
		return "", false
	}
	s.i++
	return string(s.data[start : s.i-1]), true
}

// basic consumes a single-line basic string and returns its value.
func (s *scanner) basic() (string, bool) {
	s.i++
	var b strings.Builder
	for !s.eof() {
		c := s.peek()
		switch c {
		case '"':
			s.i++
			return b.String(), true
		case '\n':
			return "", false
		case '\\':
			if s.i+1 >= len(s.data) {
				return "", false
			}
			e := s.data[s.i+1]
			s.i += 2
			switch e {
			case 'b':
				b.WriteByte('\b')
			case 't':
				b.WriteByte('\t')
			case 'n':
				b.WriteByte('\n')
			case 'f':
				b.WriteByte('\f')
			case 'r':
				b.WriteByte('\r')
			case 'e':
				b.WriteByte(0x1b)
			case '"', '\\':
				b.WriteByte(e)
			case 'x', 'u', 'U':
				n := map[byte]int{'x': 2, 'u': 4, 'U': 8}[e]
				if s.i+n > len(s.data) {
					return "", false
				}
				r, err := strconv.ParseUint(string(s.data[s.i:s.i+n]), 16, 32)
				if err != nil {
					return "", false
				}
				s.i += n
				b.WriteRune(rune(r))
			default:
				return "", false
			}
		default:
			_, size := utf8.DecodeRune(s.data[s.i:])
			b.Write(s.data[s.i : s.i+size])
			s.i += size
		}
	}
	return "", false
}
