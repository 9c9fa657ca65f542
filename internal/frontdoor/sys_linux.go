package frontdoor

import "golang.org/x/sys/unix"

// fionread is the ioctl that returns the bytes waiting in a socket's
// receive queue.
const fionread = unix.SIOCINQ
