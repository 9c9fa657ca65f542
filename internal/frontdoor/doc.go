// Package frontdoor is the supervisor command's socket server: it
// serves the clients of a [listen.Listener], speaking pairvisor's
// protocol (a Conn of package ipc) to clients whose first two bytes are
// the frame magic and echoing byte for byte to any other ("raw")
// client. A framed client whose first header is not a hello is sent an
// error frame about the connection and closed, not echoed.
//
// Around that it applies the product's policy: who may connect
// (AllowUIDs/AllowGIDs, beyond the socket file's mode) and who may send
// requests that change state (ControlUIDs/ControlGIDs; others get
// wire.CodeDenied); admission with MaxConns, a per-uid share, slots kept
// for the server's own uid and root, and eviction of the quietest raw
// or unclassified connection when the table is full; one memory budget
// shared by every client; and rate-limited logs of refusals.
//
// It is internal because it is the command's product, not library API:
// programs that serve pairvisor clients their own way use packages
// ipc/listen and ipc directly. It has no default server name; the
// command sets it.
package frontdoor
