//go:build linux

package main

import (
	"testing"

	"github.com/pairvisor/pairvisor/internal/contract"
	"github.com/pairvisor/pairvisor/internal/testutil"
)

// The test binary is also the supervisor binary (see testutil.Harness):
// a test runs the CLI as a real process by starting this binary in the
// "cli" role, which runs main itself. The workers that `run` starts
// re-execute the same binary (os.Executable) without the role variable,
// which the supervisor strips with every PAIRVISOR_ variable; the worker
// contract (PAIRVISOR_WORKER) marks them, and they run main too, which
// makes them workers.
var harness = testutil.NewHarness(testutil.HarnessConfig{
	ChildEnv: contract.EnvWorker, DefaultRole: "cli",
	// The CLI's tests wait on the processes they run (supervisors,
	// workers, clients): four at a time keep `go test -race -count=3`
	// of this package well inside go test's 10-minute limit on two
	// busy cores.
	Parallel: 4,
})

func init() {
	harness.Register("cli", func(...string) int {
		main() // exits
		return exitFail
	})
}

func TestMain(m *testing.M) { harness.Main(m) }
