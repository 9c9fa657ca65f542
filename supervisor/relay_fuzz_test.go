//go:build linux

package supervisor

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

// textRecord is the start of every line a worker's text logger writes.
var textRecord = regexp.MustCompile(`^\d{4}-\d\d-\d\dT[0-9:.]+[-+Z0-9:]* \[(TRACE|DEBUG|INFO|WARN|ERROR)\] +supervisor\.worker\.1: `)

// FuzzRelay feeds arbitrary worker output to the stderr relay, which
// decodes hclog JSON lines and level prefixes: it must never panic,
// must always reach the end of the stream, and whatever the worker
// wrote, every line of the log must be one whole record of the
// worker's logger, with the supervisor's worker and pid, no key of the
// worker's outside "w.", and no control character of the worker's, in
// text and in JSON logs alike.
func FuzzRelay(f *testing.F) {
	f.Add([]byte(`{"@level":"warn","@message":"hi","@module":"m","k":1}` + "\n"))
	f.Add([]byte("[ERROR] broken\npanic: oops\n\x00\xff\xfe binary\n"))
	f.Add([]byte(`{"@message":{"nested":true},"@level":7}` + "\n{\n"))
	f.Add(bytes.Repeat([]byte("x"), maxLine+10))
	for _, l := range forgedLines {
		f.Add([]byte(l + "\n"))
	}
	f.Add([]byte(`{"@message":"m","worker":2,"pid":1,"stream":"x","w.k":"\u001b","":"","=":"\r\n","@message ":1}` + "\n"))
	f.Fuzz(func(t *testing.T, out []byte) {
		var text, js bytes.Buffer
		newLog := func(w *bytes.Buffer, asJSON bool) hclog.Logger {
			return hclog.New(&hclog.LoggerOptions{Name: "supervisor", Output: w, Level: hclog.Trace, JSONFormat: asJSON}).
				Named("worker.1").With("worker", 1, "pid", 7)
		}
		for _, log := range []hclog.Logger{newLog(&text, false), newLog(&js, true)} {
			r := bytes.NewReader(out)
			relay(r, log, "stderr")
			if r.Len() != 0 {
				t.Fatalf("relay stopped with %d bytes unread", r.Len())
			}
		}
		if len(bytes.Trim(out, "\r\n")) > 0 && !bytes.ContainsAny(out, "{") && text.Len() == 0 {
			// Output without JSON-looking lines is always logged as text.
			t.Fatalf("output %.300q was not logged", out)
		}

		// Text: one record per line, each the worker's logger's.
		for _, l := range strings.Split(strings.TrimSuffix(text.String(), "\n"), "\n") {
			if l == "" && text.Len() == 0 {
				break
			}
			if !textRecord.MatchString(l) {
				t.Fatalf("text log line is not a record of the worker's logger: %.300q\ninput %.300q", l, out)
			}
			if strings.ContainsFunc(l, func(r rune) bool { return r != '\t' && !printable(string(r)) }) {
				t.Fatalf("text log line holds a control character: %.300q\ninput %.300q", l, out)
			}
			if !strings.Contains(l, ": pid=7 worker=1") {
				t.Fatalf("text log line without the supervisor's fields: %.300q", l)
			}
		}

		// JSON: each line one record; the supervisor's fields are its
		// own, the worker's under "w.", and every string is printable.
		own := map[string]bool{"@level": true, "@message": true, "@timestamp": true, "@module": true,
			"worker": true, "pid": true, "stream": true, "truncated": true,
			"dropped_lines": true, "dropped_bytes": true, "limit_lines_per_s": true, "limit_bytes_per_s": true}
		for _, l := range strings.Split(strings.TrimSuffix(js.String(), "\n"), "\n") {
			if l == "" && js.Len() == 0 {
				break
			}
			var rec map[string]any
			if err := json.Unmarshal([]byte(l), &rec); err != nil {
				t.Fatalf("JSON log line is not JSON: %v: %.300q", err, l)
			}
			if rec["@module"] != "supervisor.worker.1" || rec["worker"] != 1.0 || rec["pid"] != 7.0 {
				t.Fatalf("JSON record without the supervisor's module, worker and pid: %.300q\ninput %.300q", l, out)
			}
			for k, v := range rec {
				if !own[k] && !strings.HasPrefix(k, workerKeyPrefix) {
					t.Fatalf("JSON record with a key of the worker's outside %q: %.300q\ninput %.300q", workerKeyPrefix, k, out)
				}
				if !printable(k) {
					t.Fatalf("JSON record with an unprintable key %q", k)
				}
				if s, ok := v.(string); ok && !printable(s) {
					t.Fatalf("JSON record with an unprintable value %s=%.300q\ninput %.300q", k, s, out)
				}
			}
		}
	})
}
