package supervisor

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/hashicorp/go-hclog"
)

// maxLine bounds one relayed line. Longer lines are logged cut at this
// length with truncated=true and the rest of the line is dropped, so a
// worker cannot make the supervisor buffer without bound.
const maxLine = 64 << 10

// relayBuf is the read buffer of one relayed stream. Lines that do not
// fit are gathered in a buffer of their own, which exists only while
// such a line is read: 256 workers' two streams hold 2 MiB, not the
// 32 MiB that buffers of maxLine took.
const relayBuf = 4 << 10

// The rate limit on a worker's relayed output: a token bucket in lines
// and one in bytes (bytes as the worker wrote them, before escaping).
// A line is relayed only if both buckets hold enough; otherwise it is
// dropped unparsed, and the drops are reported in one warning line per
// relayDropReport at most. The bursts let a worker's start-up or a
// panic's stack trace through whole; the rates are far above what a
// worker logging at the supervisor's level writes, and far below what
// fills a disk (1 MiB/s is 86 GiB a day, against the 8.6 TiB a day of
// the 100 MB/s flood that prompted the limit).
const (
	relayLinesPerSec = 1000
	relayLineBurst   = 10000
	relayBytesPerSec = 1 << 20
	relayByteBurst   = 4 << 20 // at least maxLine, or a long line could never pass
	relayDropReport  = time.Second
)

// workerKeyPrefix is put before every key of a worker's hclog JSON
// record, and "@module" is logged as workerKeyPrefix+"@module": a worker
// can add fields to its lines but never write the supervisor's own
// (worker, pid, stream, truncated) nor hclog's (@message, @level, …).
const workerKeyPrefix = "w."

// outputLimit is the token bucket that rate-limits the output relayed
// for one worker. It is safe for concurrent use, so a worker's stdout
// and stderr relays may share one.
type outputLimit struct {
	now func() time.Time

	mu           sync.Mutex
	last         time.Time // when the buckets were last refilled
	lines, bytes float64   // tokens
	droppedLines uint64    // since the last report
	droppedBytes uint64
	lastReport   time.Time // zero before the first report
}

// newOutputLimit returns a full limit that reads the time from now.
func newOutputLimit(now func() time.Time) *outputLimit {
	return &outputLimit{now: now, last: now(), lines: relayLineBurst, bytes: relayByteBurst}
}

// take reports whether a line of n bytes may be relayed, and takes its
// tokens if so; a line that may not is counted as dropped. When drops
// are due to be reported, report is true and lines and bytes are the
// counts to report (then reset).
func (l *outputLimit) take(n int) (ok, report bool, lines, bytes uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if dt := now.Sub(l.last).Seconds(); dt > 0 {
		l.lines = min(relayLineBurst, l.lines+dt*relayLinesPerSec)
		l.bytes = min(relayByteBurst, l.bytes+dt*relayBytesPerSec)
		l.last = now
	}
	if l.lines >= 1 && l.bytes >= float64(n) {
		l.lines--
		l.bytes -= float64(n)
		ok = true
	} else {
		l.droppedLines++
		l.droppedBytes += uint64(n)
	}
	report, lines, bytes = l.due(now, false)
	return ok, report, lines, bytes
}

// dropBytes counts n more dropped bytes (the tail of a dropped long
// line) without counting a line.
func (l *outputLimit) dropBytes(n int) {
	l.mu.Lock()
	l.droppedBytes += uint64(n)
	l.mu.Unlock()
}

// flush returns the drops not reported yet, whatever the time.
func (l *outputLimit) flush() (report bool, lines, bytes uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.due(l.now(), true)
}

// due returns the drop counts and resets them when they are to be
// reported: there are some, and the last report is relayDropReport
// old (or force). Called with mu held.
func (l *outputLimit) due(now time.Time, force bool) (bool, uint64, uint64) {
	if l.droppedLines == 0 && l.droppedBytes == 0 {
		return false, 0, 0
	}
	if !force && !l.lastReport.IsZero() && now.Sub(l.lastReport) < relayDropReport {
		return false, 0, 0
	}
	lines, bytes := l.droppedLines, l.droppedBytes
	l.droppedLines, l.droppedBytes = 0, 0
	l.lastReport = now
	return true, lines, bytes
}

// relay copies a worker's output stream into log, line by line, until
// r ends, under a rate limit of its own (see relayTo).
func relay(r io.Reader, log hclog.Logger, stream string) {
	relayTo(r, log, stream, newOutputLimit(time.Now))
}

// relayTo copies a worker's output stream into log, line by line,
// until r ends. A line that is an hclog JSON record keeps its level,
// message and fields, the fields' keys prefixed with workerKeyPrefix;
// other lines are logged as they are, at a level inferred from a
// "[LEVEL]" prefix or else at info. Every string the worker wrote
// (message, keys, values) is escaped if it holds anything but printable
// characters, so it cannot start a line of its own or move the cursor
// of a terminal. Lines over lim are read and dropped, and counted in a
// warning. relayTo never fails: the protocol lives on fd 3, so nothing
// here can disturb it.
func relayTo(r io.Reader, log hclog.Logger, stream string, lim *outputLimit) {
	br := bufio.NewReaderSize(r, relayBuf)
	var long []byte   // a line longer than br's buffer, gathered until it ends or passes maxLine
	skipping := false // in the tail of a line cut at maxLine
	dropping := false // that line was dropped by the limit: count its tail
	for {
		frag, err := br.ReadSlice('\n')
		more := err == bufio.ErrBufferFull // the line goes on after frag
		switch {
		case skipping:
			if dropping {
				lim.dropBytes(len(frag))
			}
			skipping = more
		case long == nil && !more:
			if len(frag) > 0 {
				relayLine(log, stream, frag, false, lim)
			}
		default:
			long = append(long, frag...)
			body := len(long) // without the newline that ends it
			if !more && body > 0 && long[body-1] == '\n' {
				body--
			}
			switch {
			case body > maxLine:
				// Cut: maxLine bytes are logged, the rest is dropped.
				dropping = !relayLine(log, stream, long[:maxLine], true, lim)
				if dropping {
					lim.dropBytes(len(long) - maxLine)
				}
				skipping, long = more, nil
			case !more:
				relayLine(log, stream, long, false, lim)
				long = nil
			}
		}
		if err != nil && !more {
			if report, lines, bytes := lim.flush(); report {
				reportDrops(log, lines, bytes)
			}
			return
		}
	}
}

// relayLine logs one line under lim and reports whether it was not
// dropped by the limit.
func relayLine(log hclog.Logger, stream string, line []byte, truncated bool, lim *outputLimit) bool {
	if log.GetLevel() == hclog.Off {
		return true
	}
	ok, report, lines, bytes := lim.take(len(line))
	if report {
		reportDrops(log, lines, bytes)
	}
	if ok {
		logLine(log, stream, line, truncated)
	}
	return ok
}

func reportDrops(log hclog.Logger, lines, bytes uint64) {
	log.Warn("worker output over the rate limit was dropped", "dropped_lines", lines, "dropped_bytes", bytes,
		"limit_lines_per_s", relayLinesPerSec, "limit_bytes_per_s", relayBytesPerSec)
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
	args := []any{"stream", stream}
	if truncated {
		args = append(args, "truncated", true)
	}
	log.Log(level, escape(string(msg)), args...)
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
	args := make([]any, 0, 2*len(keys)+2)
	if mod, ok := rec["@module"]; ok {
		args = append(args, workerKeyPrefix+"@module", escapeValue(mod))
	}
	for _, k := range keys {
		args = append(args, workerKeyPrefix+escapeKey(k), escapeValue(rec[k]))
	}
	log.Log(level, escape(msg), args...)
	return true
}

// escape returns s as it is if it is printable, else quoted with Go
// escapes and only ASCII, so no control character (a newline, ESC, a
// bidi override) of a worker's reaches the log.
func escape(s string) string {
	if printable(s) {
		return s
	}
	return strconv.QuoteToASCII(s)
}

// escapeValue makes a decoded JSON value safe to log: strings are
// escaped, objects and arrays become their compact JSON text (which
// escapes control characters), numbers, booleans and null stay.
func escapeValue(v any) any {
	switch v := v.(type) {
	case string:
		return escape(v)
	case map[string]any, []any:
		b, err := json.Marshal(v)
		if err != nil {
			return "?"
		}
		return escape(string(b))
	}
	return v
}

// escapeKey returns k if it is a plain key, else k with every byte
// outside printable ASCII, and every space, '=', '"' and '%',
// replaced by %XX: keys are written unquoted in text logs.
func escapeKey(k string) string {
	plain := k != ""
	for i := 0; i < len(k) && plain; i++ {
		plain = keyByte(k[i])
	}
	if plain {
		return k
	}
	var b strings.Builder
	for i := 0; i < len(k); i++ {
		if c := k[i]; keyByte(c) {
			b.WriteByte(c)
		} else {
			b.WriteByte('%')
			b.WriteByte("0123456789ABCDEF"[c>>4])
			b.WriteByte("0123456789ABCDEF"[c&15])
		}
	}
	return b.String()
}

func keyByte(c byte) bool {
	return c > ' ' && c < 0x7f && c != '=' && c != '"' && c != '%'
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

// printable reports whether s is valid UTF-8 made of printable
// characters (letters, marks, numbers, punctuation, symbols and the
// ASCII space) and tabs: no control or format character, no line or
// paragraph separator.
func printable(s string) bool {
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c < ' ' && c != '\t' || c == 0x7f {
				return false
			}
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n <= 1 || !unicode.IsPrint(r) {
			return false
		}
		i += n
	}
	return true
}
