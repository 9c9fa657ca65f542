//go:build linux

package config

import (
	"testing"

	"github.com/pairvisor/pairvisor/internal/testutil"
)

// harness adds the project's leak checks (descriptors left open by Load,
// goroutines) after the tests; this package starts no helper processes.
var harness = testutil.NewHarness(testutil.HarnessConfig{})

func TestMain(m *testing.M) { harness.Main(m) }
