//go:build linux

package worker

import (
	"testing"

	"github.com/pairvisor/pairvisor/internal/contract"
)

// TestFromEnvLogLevels: the worker's logger takes the level named by
// PAIRVISOR_LOG_LEVEL, one of the values docs/PROTOCOL.md lists ("off"
// is what a supervisor without a logger sends); a missing or unknown
// value means info.
func TestFromEnvLogLevels(t *testing.T) {
	t.Parallel()
	for value, want := range map[string]string{
		"trace": "trace", "debug": "debug", "info": "info", "warn": "warn", "error": "error", "off": "off",
		"": "info", "bogus": "info",
	} {
		t.Run("level="+value, func(t *testing.T) {
			t.Parallel()
			_, childEnd := socketpair(t)
			rep := readReport(t, startChild(t, "report", childEnd, append(contractEnv("1"), contract.EnvLogLevel+"="+value)...))
			if rep.Err != "" || rep.Level != want {
				t.Errorf("%s=%q: logger level %q (error %q), want %q", contract.EnvLogLevel, value, rep.Level, rep.Err, want)
			}
		})
	}
}
