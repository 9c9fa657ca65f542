// Package listen creates listening Unix sockets at filesystem paths
// safely and accepts connections on them with their peers' credentials.
//
// [New] never steals a live server's socket and never deletes a file
// that is not a socket: it serialises starts with a lock file, removes
// only a stale socket (one whose connect is refused), binds in a private
// directory so the socket never exists with wider permissions than
// asked, and rebinds a socket file that someone deletes. [Listener.Accept]
// waits in the runtime's poller, returns promptly when its context ends
// or the Listener closes, and hands over each connection as an owned,
// close-on-exec *os.File with the peer's [Cred] (supplementary groups on
// request, [Peer.Groups]). Names starting with "@" are Linux abstract
// sockets. [FromFile] wraps a listening socket that somebody else
// created and owns the path of (systemd's socket activation) in a
// Listener that accepts the same way and leaves the path alone.
//
// It does not speak the protocol: wrap an accepted file with package
// ipc's NewConn for that, or dial a path with ipc.Dial. Which clients to
// serve and how many is the caller's policy.
package listen
