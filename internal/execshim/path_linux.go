package execshim

import (
	"os"

	"golang.org/x/sys/unix"
)

// Path returns the executable a supervisor starts as the shim: this
// very program. On Linux that is /proc/self/exe, which in the child
// (between fork and exec it is still this program) names this
// program's image even if its file was since replaced or removed, as in
// a deploy; where /proc is not mounted, the path os.Executable finds.
func Path() (string, error) {
	const self = "/proc/self/exe"
	if unix.Access(self, unix.X_OK) == nil {
		return self, nil
	}
	return os.Executable()
}
