//go:build linux

package supervisor

import (
	"bytes"
	"testing"

	"github.com/hashicorp/go-hclog"
)

// FuzzRelay feeds arbitrary worker output to the stderr relay, which
// decodes hclog JSON lines and level prefixes: it must never panic and
// must always reach the end of the stream.
func FuzzRelay(f *testing.F) {
	f.Add([]byte(`{"@level":"warn","@message":"hi","@module":"m","k":1}` + "\n"))
	f.Add([]byte("[ERROR] broken\npanic: oops\n\x00\xff\xfe binary\n"))
	f.Add([]byte(`{"@message":{"nested":true},"@level":7}` + "\n{\n"))
	f.Add(bytes.Repeat([]byte("x"), maxLine+10))
	f.Fuzz(func(t *testing.T, out []byte) {
		var logged bytes.Buffer
		log := hclog.New(&hclog.LoggerOptions{Output: &logged, Level: hclog.Trace, JSONFormat: true})
		r := bytes.NewReader(out)
		relay(r, log, "stderr")
		if r.Len() != 0 {
			t.Fatalf("relay stopped with %d bytes unread", r.Len())
		}
		if len(out) > 0 && bytes.TrimSpace(out) != nil && logged.Len() == 0 && !bytes.ContainsAny(out, "{") {
			// Output without JSON-looking lines is always logged as text.
			if len(bytes.Trim(out, "\r\n")) > 0 {
				t.Fatalf("output %q was not logged", out)
			}
		}
	})
}
