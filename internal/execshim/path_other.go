//go:build !linux

package execshim

import "os"

// Path returns the executable a supervisor starts as the shim: this
// very program, as os.Executable finds it.
func Path() (string, error) { return os.Executable() }
