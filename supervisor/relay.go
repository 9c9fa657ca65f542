//go:build linux

package supervisor

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"sort"
	"strconv"
	"unicode/utf8"

	"github.com/hashicorp/go-hclog"
)

// maxLine bounds one relayed line. Longer lines are logged cut at this
// length with truncated=true and the rest of the line is dropped, so a
// worker cannot make the supervisor buffer without bound.
const maxLine = 64 << 10

// relay copies a worker's output stream into log, line by line, until
// r ends. A line that is an hclog JSON record keeps its level, message
// and fields; other lines are logged as they are, at a level inferred
// from a "[LEVEL]" prefix or else at info; binary junk is quoted. It
// never fails: the protocol lives on fd 3, so nothing here can
// disturb it.
func relay(r io.Reader, log hclog.Logger, stream string) {
	br := bufio.NewReaderSize(r, maxLine+1) // a line of maxLine bytes and its newline fit
	truncated := false
	for {
		line, err := br.ReadSlice('\n')
		switch {
		case err == bufio.ErrBufferFull:
			if !truncated {
				logLine(log, stream, line[:maxLine], true)
			}
			truncated = true
			continue
		case truncated:
			truncated = false // the tail of a cut line
		case len(line) > 0:
			logLine(log, stream, line, false)
		}
		if err != nil {
			return
		}
	}
}

// hclog JSON keys that are not fields.
var metaKeys = map[string]bool{"@level": true, "@message": true, "@timestamp": true, "@module": true, "@caller": true}

func logLine(log hclog.Logger, stream string, line []byte, truncated bool) {
	line = bytes.TrimRight(line, "\r\n")
	if len(line) == 0 {
		return
	}
	if !truncated && line[0] == '{' {
		if logJSON(log, line) {
			return
		}
	}
	level, msg := hclog.Info, line
	if lv, rest, ok := levelPrefix(line); ok {
		level, msg = lv, rest
	}
	if !enabled(log, level) {
		return
	}
	text := string(msg)
	if !printable(msg) {
		text = strconv.QuoteToASCII(text)
	}
	args := []any{"stream", stream}
	if truncated {
		args = append(args, "truncated", true)
	}
	log.Log(level, text, args...)
}

// logJSON logs an hclog JSON record at its own level and reports
// whether line was one.
func logJSON(log hclog.Logger, line []byte) bool {
	var rec map[string]any
	if json.Unmarshal(line, &rec) != nil {
		return false
	}
	msg, ok := rec["@message"].(string)
	if !ok {
		return false
	}
	lvl, _ := rec["@level"].(string)
	level := hclog.LevelFromString(lvl)
	if level == hclog.NoLevel {
		level = hclog.Info
	}
	if !enabled(log, level) {
		return true
	}
	keys := make([]string, 0, len(rec))
	for k := range rec {
		if !metaKeys[k] {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	args := make([]any, 0, 2*len(keys))
	for _, k := range keys {
		args = append(args, k, rec[k])
	}
	if mod, ok := rec["@module"].(string); ok && mod != "" {
		log = log.Named(mod)
	}
	log.Log(level, msg, args...)
	return true
}

var levelPrefixes = []struct {
	prefix string
	level  hclog.Level
}{
	{"[TRACE]", hclog.Trace}, {"[DEBUG]", hclog.Debug}, {"[INFO]", hclog.Info},
	{"[WARN]", hclog.Warn}, {"[ERROR]", hclog.Error}, {"panic:", hclog.Error}, {"fatal error:", hclog.Error},
}

func levelPrefix(line []byte) (hclog.Level, []byte, bool) {
	for _, p := range levelPrefixes {
		if bytes.HasPrefix(line, []byte(p.prefix)) {
			if p.prefix[0] != '[' {
				return p.level, line, true // keep "panic: …" whole
			}
			return p.level, bytes.TrimLeft(line[len(p.prefix):], " "), true
		}
	}
	return 0, nil, false
}

func enabled(log hclog.Logger, l hclog.Level) bool {
	cur := log.GetLevel()
	return cur != hclog.Off && l >= cur
}

// printable reports whether b is valid UTF-8 without control characters
// other than tab.
func printable(b []byte) bool {
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		if r == utf8.RuneError && n <= 1 || r < 0x20 && r != '\t' || r == 0x7f {
			return false
		}
		b = b[n:]
	}
	return true
}
