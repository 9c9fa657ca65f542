// Package sysfd makes descriptors close-on-exec from their first
// instant, on every system pairvisor builds for: a descriptor that a
// concurrent fork and exec inherited would outlive its owner in a child
// (a worker holding a listener, a client's socket, a notify socket).
package sysfd
