//go:build linux

package supervisor

import (
	"context"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
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
			want: []rec{{"warn", "m", "r", map[string]any{"a": "s", "b": 2.0}}}},
		{name: "json module", in: `{"@level":"error","@message":"m","@module":"sub"}` + "\n",
			want: []rec{{"error", "m", "r.sub", map[string]any{}}}},
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
		{"debug", "debug-line", "worker.1", map[string]any{"k": "v"}},
		{"info", "info-line", "worker.1", map[string]any{"n": 7.0}},
		{"warn", "warn-line", "worker.1.sub", map[string]any{}},
		{"error", "error-line", "worker.1", map[string]any{"error": "boom"}},
		{"info", "plain text line", "worker.1", stderr},
		{"warn", "x", "worker.1", stderr},
		{"error", "panic: oh no", "worker.1", stderr},
		{"info", "after-long-line", "worker.1", stderr},
		{"info", junk, "worker.1", stderr},
		{"info", "to-stdout", "worker.1", map[string]any{"stream": "stdout"}},
		{"info", "partial-last-line", "worker.1", stderr},              // relayed at EOF
		{"debug", "ready", "worker.1", map[string]any{"version": 1.0}}, // Serve's own log, at our level
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
