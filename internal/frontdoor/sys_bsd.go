//go:build darwin || freebsd

package frontdoor

// fionread is the ioctl that returns the bytes waiting in a socket's
// receive queue: FIONREAD, _IOR('f', 127, int) on both systems (x/sys
// does not define it for them).
const fionread = 0x4004667f
