package tcplisten

import "errors"

// Sentinel errors. Test for them with errors.Is.
var (
	// ErrAddress reports an address that is not HOST:PORT with HOST an
	// IP address of the network's family, "localhost", "*" or nothing,
	// and PORT a number from 0 to 65535. Parse, ParseHost and Listen
	// return errors that wrap it.
	ErrAddress = errors.New("tcplisten: invalid address")
)
