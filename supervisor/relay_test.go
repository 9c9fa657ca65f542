//go:build linux

package supervisor

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/pairvisor/pairvisor/worker"
)

// rec is the part of a relayed log record the tests compare.
type rec struct {
	Level  string
	Msg    string
	Module string
	Fields map[string]any
}

func simplify(r map[string]any) rec {
	out := rec{Fields: map[string]any{}}
	for k, v := range r {
		switch k {
		case "@level":
			out.Level, _ = v.(string)
		case "@message":
			out.Msg, _ = v.(string)
		case "@module":
			out.Module, _ = v.(string)
		case "@timestamp", "@caller":
		default:
			out.Fields[k] = v
		}
	}
	return out
}

func TestRelayLines(t *testing.T) {
	t.Parallel()
	stderr := map[string]any{"stream": "stderr"}
	long := strings.Repeat("a", maxLine)
	cases := []struct {
		name  string
		in    string
		level hclog.Level
		want  []rec
	}{
		{name: "empty", in: "", want: nil},
		{name: "plain", in: "one\n\n\r\ntwo\r\nthree", want: []rec{
			{"info", "one", "r", stderr}, {"info", "two", "r", stderr}, {"info", "three", "r", stderr},
		}},
		{name: "hclog json", in: `{"@level":"warn","@message":"m","@timestamp":"x","@caller":"c","b":2,"a":"s"}` + "\n",
			want: []rec{{"warn", "m", "r", map[string]any{"w.a": "s", "w.b": 2.0}}}},
		{name: "json module", in: `{"@level":"error","@message":"m","@module":"sub"}` + "\n",
			want: []rec{{"error", "m", "r", map[string]any{"w.@module": "sub"}}}},
		{name: "json values", in: `{"@message":"m","s":"a\u001bb","o":{"k":"\n"},"l":[1,"x"],"n":null,"t":true,"a b=c":1}` + "\n",
			want: []rec{{"info", "m", "r", map[string]any{"w.s": `"a\x1bb"`, "w.o": `{"k":"\n"}`, "w.l": `[1,"x"]`,
				"w.n": nil, "w.t": true, "w.a%20b%3Dc": 1.0}}}},
		{name: "json unknown level", in: `{"@level":"loud","@message":"m"}` + "\n",
			want: []rec{{"info", "m", "r", map[string]any{}}}},
		{name: "json without message", in: `{"a":1}` + "\n",
			want: []rec{{"info", `{"a":1}`, "r", stderr}}},
		{name: "broken json", in: "{oops\n", want: []rec{{"info", "{oops", "r", stderr}}},
		{name: "json filtered", in: `{"@level":"trace","@message":"t"}` + "\n" + `{"@level":"debug","@message":"d"}` + "\n",
			level: hclog.Debug, want: []rec{{"debug", "d", "r", map[string]any{}}}},
		{name: "prefixes", in: "[TRACE] t\n[DEBUG] d\n[INFO]  i\n[WARN] w\n[ERROR]e\npanic: p\nfatal error: f\n", level: hclog.Debug,
			want: []rec{
				{"debug", "d", "r", stderr}, {"info", "i", "r", stderr}, {"warn", "w", "r", stderr},
				{"error", "e", "r", stderr}, {"error", "panic: p", "r", stderr}, {"error", "fatal error: f", "r", stderr},
			}},
		{name: "off", in: "x\n{\"@level\":\"error\",\"@message\":\"m\"}\n", level: hclog.Off, want: nil},
		{name: "binary", in: "a\x00b\xffc\n\ttab ok\n", want: []rec{
			{"info", strconv.QuoteToASCII("a\x00b\xffc"), "r", stderr}, {"info", "\ttab ok", "r", stderr},
		}},
		{name: "long line", in: strings.Repeat("a", 3*maxLine+5) + "\nnext\n", want: []rec{
			{"info", long, "r", map[string]any{"stream": "stderr", "truncated": true}}, {"info", "next", "r", stderr},
		}},
		{name: "long line at eof", in: strings.Repeat("b", maxLine+1), want: []rec{
			{"info", strings.Repeat("b", maxLine), "r", map[string]any{"stream": "stderr", "truncated": true}},
		}},
		{name: "just under the limit", in: long[1:] + "\n", want: []rec{{"info", long[1:], "r", stderr}}},
		{name: "exactly the limit", in: long + "\n", want: []rec{{"info", long, "r", stderr}}},
		{name: "longer than the read buffer", in: long[:3*relayBuf+7] + "\n" + long[:relayBuf] + "\nx", want: []rec{
			{"info", long[:3*relayBuf+7], "r", stderr}, {"info", long[:relayBuf], "r", stderr}, {"info", "x", "r", stderr},
		}},
		{name: "longer than the read buffer at eof", in: long[:relayBuf+1], want: []rec{{"info", long[:relayBuf+1], "r", stderr}}},
		{name: "one over the limit, then more", in: long + "a\n" + long[:5] + "\n", want: []rec{
			{"info", long, "r", map[string]any{"stream": "stderr", "truncated": true}}, {"info", long[:5], "r", stderr},
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			var buf syncBuffer
			level := c.level
			if level == hclog.NoLevel {
				level = hclog.Info
			}
			log := hclog.New(&hclog.LoggerOptions{Name: "r", Output: &buf, JSONFormat: true, Level: level})
			relay(strings.NewReader(c.in), log, "stderr")
			var got []rec
			for _, r := range buf.records() {
				got = append(got, simplify(r))
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Errorf("relayed\n%s\nwant\n%s", show(got), show(c.want))
			}
		})
	}
}

func show(rs []rec) string {
	var b strings.Builder
	for _, r := range rs {
		msg := r.Msg
		if len(msg) > 40 {
			msg = msg[:40] + "…(" + strconv.Itoa(len(r.Msg)) + " bytes)"
		}
		b.WriteString("\t" + r.Level + " " + r.Module + " " + strconv.Quote(msg) + " " + formatFields(r.Fields) + "\n")
	}
	return b.String()
}

func formatFields(f map[string]any) string {
	var parts []string
	for k, v := range f {
		parts = append(parts, k+"="+strings.TrimSpace(strings.ReplaceAll(strconv.Quote(toString(v)), "\n", "")))
	}
	return strings.Join(parts, " ")
}

func toString(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case float64:
		return strconv.FormatFloat(v, 'g', -1, 64)
	case bool:
		return strconv.FormatBool(v)
	}
	return "?"
}

// TestRelayWorkerOutput runs a worker that writes all kinds of output
// and checks how it reaches the supervisor's log, and that none of it
// disturbs the channel.
func TestRelayWorkerOutput(t *testing.T) {
	t.Parallel()
	r := startSupervisor(t, testConfig(t, "stderr", 1))
	r.waitReady()
	wpid := r.s.Status().Workers[0].PID
	junk := strconv.QuoteToASCII(binaryJunk)
	deadline := time.Now().Add(eventWait)
	for len(r.logs.find(junk)) == 0 || len(r.logs.find("to-stdout")) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the worker's output was not relayed within %v", eventWait)
		}
		time.Sleep(5 * time.Millisecond) // polling the log
	}

	// The channel is undisturbed: echoes and pings go on, same worker.
	pings := r.s.Stats().PingsAnswered
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 20 {
		payload := randomBytes(i*1000, uint64(i))
		got, err := r.s.Echo(ctx, payload, nil)
		if err != nil || string(got) != string(payload) {
			t.Fatalf("Echo %d after the output: %s, %v", i, describe(got), err)
		}
	}
	r.waitStatus("more pongs", func(Status) bool { return r.s.Stats().PingsAnswered >= pings+3 })
	if ws := r.s.Status().Workers[0]; ws.PID != wpid || ws.Restarts != 0 || ws.State != StateReady {
		t.Errorf("worker after its output: %+v, want pid %d, ready, no restart", ws, wpid)
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}

	// Every relayed line is logged under worker.1 with the worker's pid.
	var got []rec
	truncated := 0
	for _, raw := range r.logs.records() {
		rc := simplify(raw)
		if !strings.HasPrefix(rc.Module, "worker.1") {
			continue
		}
		if pid, _ := rc.Fields["pid"].(float64); int(pid) != wpid {
			t.Errorf("record without the worker's pid %d: %+v", wpid, raw)
		}
		if id, _ := rc.Fields["worker"].(float64); id != 1 {
			t.Errorf("record without worker=1: %+v", raw)
		}
		delete(rc.Fields, "pid")
		delete(rc.Fields, "worker")
		if rc.Fields["truncated"] == true {
			truncated++
			if rc.Msg != strings.Repeat("a", maxLine) {
				t.Errorf("truncated line: %d bytes, want %d a's", len(rc.Msg), maxLine)
			}
		}
		if strings.Contains(rc.Msg, "aaaa") && rc.Fields["truncated"] != true || strings.HasSuffix(rc.Msg, "Z") {
			t.Errorf("a piece of the long line was relayed: %.60q (%d bytes)", rc.Msg, len(rc.Msg))
		}
		got = append(got, rc)
	}
	if truncated != 1 {
		t.Errorf("%d truncated records, want 1", truncated)
	}
	stderr := map[string]any{"stream": "stderr"}
	want := []rec{
		{"debug", "debug-line", "worker.1", map[string]any{"w.k": "v"}},
		{"info", "info-line", "worker.1", map[string]any{"w.n": 7.0}},
		{"warn", "warn-line", "worker.1", map[string]any{"w.@module": "sub"}},
		{"error", "error-line", "worker.1", map[string]any{"w.error": "boom"}},
		{"info", "plain text line", "worker.1", stderr},
		{"warn", "x", "worker.1", stderr},
		{"error", "panic: oh no", "worker.1", stderr},
		{"info", "after-long-line", "worker.1", stderr},
		{"info", junk, "worker.1", stderr},
		{"info", "to-stdout", "worker.1", map[string]any{"stream": "stdout"}},
		{"info", "partial-last-line", "worker.1", stderr},                // relayed at EOF
		{"debug", "ready", "worker.1", map[string]any{"w.version": 3.0}}, // Serve's own log, at our level (protocol version 3)
	}
	for _, w := range want {
		found := false
		for _, g := range got {
			if reflect.DeepEqual(g, w) {
				found = true
				break
			}
		}
		if !found {
			t.Errorf("missing relayed record %s", show([]rec{w}))
		}
	}
	for _, g := range got {
		if g.Msg == "trace-line" {
			t.Errorf("a trace line was relayed at debug level: %+v", g)
		}
	}
	if t.Failed() {
		t.Logf("relayed:\n%s", show(got))
	}
}

// forgedLines are worker output lines that try to pass for the
// supervisor's own log lines: hclog JSON with the supervisor's module,
// message and fields, control characters and embedded newlines, and
// plain text with terminal escapes.
var forgedLines = []string{
	`{"@level":"error","@message":"giving up\n2026-01-01T00:00:00.000Z [ERROR] supervisor: giving up: error=\"crash loop\"",` +
		`"@module":"supervisor","@timestamp":"2026-01-01T00:00:00.000Z","worker":2,"pid":1,"stream":"x","truncated":true,"@caller":"x.go:1"}`,
	`{"@level":"warn","@message":"\u001b[2J\u001b[1;1H\u001b]0;owned\u0007cleared\r[ERROR] supervisor: giving up","@module":"\u001b[31msupervisor\n",` +
		`"k\n2026-01-01T00:00:00.000Z [ERROR] supervisor: x":"v\u001b[0m\r\n[ERROR] supervisor: giving up","obj":{"a":"\u001b[0m\n"},"arr":["\n\u001b"]}`,
	`{"@level":"info","@message":"right\u202eto-left \u2028line separator \u0085next line","worker ":"1","@message ":"m"}`,
	"\x1b[31m[ERROR] supervisor: giving up\x1b[0m\r",
	"[ERROR] supervisor: giving up: error=\"crash loop\"",
}

// TestRelayForgery relays forged lines through a text and a JSON
// logger set up as the supervisor sets up a worker's, and parses the
// result: every record is one line, named as the worker's logger,
// carries the supervisor's worker and pid, and holds no control
// character of the worker's.
func TestRelayForgery(t *testing.T) {
	t.Parallel()
	in := strings.Join(forgedLines, "\n") + "\n"
	newLog := func(out *syncBuffer, json bool) hclog.Logger {
		return hclog.New(&hclog.LoggerOptions{Name: "supervisor", Output: out, JSONFormat: json, Level: hclog.Trace}).
			Named("worker.1").With("worker", 1, "pid", 4242)
	}
	controls := func(s string) bool {
		return strings.ContainsFunc(s, func(r rune) bool {
			return r < 0x20 && r != '\t' || r == 0x7f || r >= 0x80 && r < 0xa0 || r == '\u2028' || r == '\u202e'
		})
	}

	t.Run("text", func(t *testing.T) {
		t.Parallel()
		var out syncBuffer
		relay(strings.NewReader(in), newLog(&out, false), "stderr")
		lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
		if len(lines) != len(forgedLines) {
			t.Fatalf("%d forged lines made %d log lines, want one each:\n%s", len(forgedLines), len(lines), out.String())
		}
		header := regexp.MustCompile(`^\d{4}-\d\d-\d\dT[0-9:.]+[-+Z0-9:]* \[(TRACE|DEBUG|INFO|WARN|ERROR)\] +supervisor\.worker\.1: `)
		for i, l := range lines {
			if !header.MatchString(l) {
				t.Errorf("line %d is not the worker's logger's: %q", i, l)
			}
			if controls(l) {
				t.Errorf("line %d holds a control character: %q", i, l)
			}
			// The supervisor's own fields appear once each, unprefixed;
			// the worker's are all under "w.".
			if n := len(regexp.MustCompile(`\sworker=`).FindAllString(l, -1)); n != 1 || !strings.Contains(l, " worker=1 ") {
				t.Errorf("line %d: %d worker= fields, want just the supervisor's worker=1: %q", i, n, l)
			}
			if n := len(regexp.MustCompile(`\spid=`).FindAllString(l, -1)); n != 1 || !strings.Contains(l, " pid=4242") {
				t.Errorf("line %d: %d pid= fields, want just the supervisor's pid=4242: %q", i, n, l)
			}
		}
		if !strings.Contains(lines[0], "w.worker=2") || !strings.Contains(lines[0], "w.pid=1") || !strings.Contains(lines[0], `w.@module=supervisor`) {
			t.Errorf("the worker's own fields are not kept under w.: %q", lines[0])
		}
	})

	t.Run("json", func(t *testing.T) {
		t.Parallel()
		var out syncBuffer
		relay(strings.NewReader(in), newLog(&out, true), "stderr")
		lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
		if len(lines) != len(forgedLines) {
			t.Fatalf("%d forged lines made %d log lines, want one each:\n%s", len(forgedLines), len(lines), out.String())
		}
		own := map[string]bool{"@level": true, "@message": true, "@timestamp": true, "@module": true, "worker": true, "pid": true, "stream": true}
		for i, l := range lines {
			var r map[string]any
			if err := json.Unmarshal([]byte(l), &r); err != nil {
				t.Fatalf("line %d is not JSON: %v: %q", i, err, l)
			}
			if r["@module"] != "supervisor.worker.1" || r["worker"] != 1.0 || r["pid"] != 4242.0 {
				t.Errorf("line %d does not carry the supervisor's module, worker and pid: %q", i, l)
			}
			for k, v := range r {
				if !own[k] && !strings.HasPrefix(k, "w.") {
					t.Errorf("line %d: the worker wrote key %q outside w.: %q", i, k, l)
				}
				if controls(k) {
					t.Errorf("line %d: key %q holds a control character", i, k)
				}
				if s, ok := v.(string); ok && controls(s) {
					t.Errorf("line %d: %s=%q holds a control character", i, k, s)
				}
			}
		}
	})
}

// inputClock is a fake clock driven by the bytes read through it: a
// worker writing at rate bytes per second.
type inputClock struct {
	r     io.Reader
	rate  float64
	read  int64
	start time.Time
}

func (c *inputClock) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.read += int64(n)
	return n, err
}

func (c *inputClock) now() time.Time {
	return c.start.Add(time.Duration(float64(c.read) / c.rate * float64(time.Second)))
}

// lineSource endlessly repeats one line.
type lineSource struct {
	line []byte
	off  int
}

func (s *lineSource) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		c := copy(p[n:], s.line[s.off:])
		n += c
		s.off = (s.off + c) % len(s.line)
	}
	return n, nil
}

// countingWriter counts what is written to it and keeps only the JSON
// records that are not relayed lines (the drop reports), and the
// number of the others.
type countingWriter struct {
	bytes, relayed int
	reports        []map[string]any
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.bytes += len(p)
	if bytes.Contains(p, []byte(`"stream":"stderr"`)) {
		w.relayed++
	} else {
		var r map[string]any
		json.Unmarshal(p, &r)
		w.reports = append(w.reports, r)
	}
	return len(p), nil
}

// TestRelayFlood feeds 100 MB of output through the relay, timed by a
// clock that counts the input as written at 10 MB/s, and checks that
// the log got no more than the limit allows in those 10 s, and that
// the drop reports account for every line and byte not relayed.
func TestRelayFlood(t *testing.T) {
	t.Parallel()
	const (
		total   = 100_000_000
		lineLen = 1000
		rate    = 10_000_000 // bytes per second of the fake clock
	)
	line := append(bytes.Repeat([]byte("x"), lineLen-1), '\n')
	clock := &inputClock{r: io.LimitReader(&lineSource{line: line}, total), rate: rate, start: time.Unix(1e9, 0)}
	var out countingWriter
	log := hclog.New(&hclog.LoggerOptions{Output: &out, JSONFormat: true, Level: hclog.Info}).
		Named("worker.1").With("worker", 1, "pid", 4242)
	relayTo(clock, log, "stderr", newOutputLimit(clock.now))

	if clock.read != total {
		t.Fatalf("the relay read %d bytes of %d", clock.read, total)
	}
	seconds := float64(total) / rate
	maxLines := relayLineBurst + seconds*relayLinesPerSec
	maxBytes := relayByteBurst + seconds*relayBytesPerSec
	if allowed := min(maxLines, maxBytes/lineLen); float64(out.relayed) > allowed {
		t.Errorf("%d lines relayed in %.0f s of input; the limit allows %.0f", out.relayed, seconds, allowed)
	}
	// Each relayed record is the line plus about 150 bytes of JSON.
	const overhead, reportSize = 200, 400
	maxReports := int(seconds/relayDropReport.Seconds()) + 2
	budget := maxBytes + maxLines*overhead + float64(maxReports*reportSize)
	if float64(out.bytes) > budget {
		t.Errorf("%d bytes of log from %d bytes of output in %.0f s; the limit allows %.0f", out.bytes, total, seconds, budget)
	}
	if len(out.reports) > maxReports || len(out.reports) == 0 {
		t.Errorf("%d drop reports in %.0f s, want 1 to %d", len(out.reports), seconds, maxReports)
	}
	var droppedLines, droppedBytes float64
	for _, r := range out.reports {
		if r["@message"] != "worker output over the rate limit was dropped" || r["@level"] != "warn" || r["worker"] != 1.0 {
			t.Fatalf("unexpected record %v", r)
		}
		dl, _ := r["dropped_lines"].(float64)
		db, _ := r["dropped_bytes"].(float64)
		droppedLines += dl
		droppedBytes += db
	}
	if int(droppedLines)+out.relayed != total/lineLen || int(droppedBytes)+out.relayed*lineLen != total {
		t.Errorf("relayed %d lines and reported %.0f lines (%.0f bytes) dropped; the input had %d lines (%d bytes)",
			out.relayed, droppedLines, droppedBytes, total/lineLen, total)
	}
	t.Logf("%d MB in: %d lines (%d bytes of log) relayed, %.0f dropped, %d reports", total/1_000_000, out.relayed, out.bytes, droppedLines, len(out.reports))
}

// TestRelayLimitLongLines checks the byte bucket with lines longer than
// maxLine: a dropped long line counts all its bytes, tail included.
func TestRelayLimitLongLines(t *testing.T) {
	t.Parallel()
	const lineLen = 3*maxLine + 10
	n := relayByteBurst/maxLine + 20 // more long lines than the burst holds
	in := strings.Repeat(strings.Repeat("y", lineLen-1)+"\n", n)
	var now time.Time // the clock stands still: only the burst is spent
	var out countingWriter
	log := hclog.New(&hclog.LoggerOptions{Output: &out, JSONFormat: true})
	relayTo(strings.NewReader(in), log, "stderr", newOutputLimit(func() time.Time { return now }))
	if want := relayByteBurst / maxLine; out.relayed != want {
		t.Errorf("%d long lines relayed, want %d (the burst, at %d bytes each)", out.relayed, want, maxLine)
	}
	var dl, db float64
	for _, r := range out.reports {
		l, _ := r["dropped_lines"].(float64)
		b, _ := r["dropped_bytes"].(float64)
		dl, db = dl+l, db+b
	}
	if int(dl) != n-out.relayed || int(db) != (n-out.relayed)*lineLen {
		t.Errorf("reported %.0f lines, %.0f bytes dropped; want %d, %d", dl, db, n-out.relayed, (n-out.relayed)*lineLen)
	}
}

// Output of the forge role: the forged lines, then floodLines lines of
// floodLineLen bytes, all before the hello.
const (
	floodLines   = 32 << 10
	floodLineLen = 1 << 10
)

func init() {
	workerRoles["forge"] = func(w *worker.Worker, _ string) int {
		for _, l := range forgedLines {
			os.Stderr.WriteString(l + "\n")
		}
		line := []byte(strings.Repeat("f", floodLineLen-1) + "\n")
		buf := bytes.Repeat(line, 64)
		for range floodLines / 64 {
			os.Stderr.Write(buf)
		}
		// Nothing else on stderr: a line of the worker's own log that
		// came while the bucket was still empty would be counted among
		// the flood's drops.
		return serve(context.Background(), w, worker.Config{Logger: hclog.NewNullLogger()})
	}
}

// TestRelayForgingWorker runs a worker that forges the supervisor's
// log lines and then floods its stderr with 32 MiB before its hello:
// the worker is not held up by the relay, its lines carry the
// supervisor's worker and pid, and the flood reaches the log only up to
// the rate limit, the rest counted in drop reports.
func TestRelayForgingWorker(t *testing.T) {
	t.Parallel()
	start := time.Now()
	cfg := testConfig(t, "forge", 1)
	// The hello comes after the relay has read the flood and logged
	// what the limit lets through: seconds of work for the race-enabled
	// supervisor, and over readyWait on two busy cores (it failed so).
	// The wait is bounded by progress instead: the log must grow within
	// readyWait of its last growth (the limit lets a line through every
	// millisecond, and a drop report every second).
	cfg.StartTimeout = time.Hour
	r := startSupervisor(t, cfg)
	r.waitReadyWhile("the relay's log", r.logs.Len)
	wpid := r.s.Status().Workers[0].PID
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)

	var floodRelayed, floodBytes, droppedLines, droppedBytes, forged int
	for _, raw := range r.logs.records() {
		if raw["@module"] != "worker.1" {
			continue
		}
		if raw["worker"] != 1.0 || raw["pid"] != float64(wpid) {
			t.Errorf("a worker record without the supervisor's worker=1 pid=%d: %v", wpid, raw)
		}
		msg, _ := raw["@message"].(string)
		isForged := strings.Contains(msg, "giving up") || strings.Contains(msg, "to-left")
		if isForged {
			forged++
			for k := range raw {
				switch {
				case k == "@level", k == "@message", k == "@timestamp", k == "@module", k == "worker", k == "pid", k == "stream", strings.HasPrefix(k, "w."):
				default:
					t.Errorf("forged record with key %q: %v", k, raw)
				}
			}
		}
		switch {
		case strings.HasPrefix(msg, "ffff"):
			floodRelayed++
			floodBytes += len(msg) + 1
		case msg == "worker output over the rate limit was dropped":
			dl, _ := raw["dropped_lines"].(float64)
			db, _ := raw["dropped_bytes"].(float64)
			droppedLines += int(dl)
			droppedBytes += int(db)
		case isForged:
			if !printable(msg) {
				t.Errorf("a forged message reached the log unescaped: %q", msg)
			}
		}
	}
	if forged != len(forgedLines) {
		t.Errorf("%d forged lines relayed, want %d", forged, len(forgedLines))
	}
	if floodRelayed+droppedLines != floodLines || floodBytes+droppedBytes != floodLines*floodLineLen {
		t.Errorf("flood of %d lines: %d relayed, %d reported dropped (%d and %d bytes)", floodLines, floodRelayed, droppedLines, floodBytes, droppedBytes)
	}
	// The limit over the whole test's time is an upper bound whatever
	// the machine's speed.
	if max := relayByteBurst + elapsed.Seconds()*relayBytesPerSec; float64(floodBytes) > max {
		t.Errorf("%d bytes of the flood relayed in %v; the limit allows %.0f", floodBytes, elapsed, max)
	}
	t.Logf("flood: %d lines relayed, %d dropped in %v", floodRelayed, droppedLines, elapsed)
}
