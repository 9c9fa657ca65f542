// Command uds-echo is the seed's Unix socket echo server and client
// (socket_echo_server_uds.py, socket_echo_client_uds.py) in Go.
//
//	go run ./examples/uds-echo server ./uds_socket &
//	go run ./examples/uds-echo client ./uds_socket
//
// The server binds with pairvisor's listen.New, which removes a stale
// socket left by a crash but refuses to steal a live server's socket or
// to delete a file that is not a socket (the seed unlinks whatever is
// there), and gives the socket mode 0600 so only its owner may connect.
// Each connection is served by its own goroutine: a slow client does not
// hold up the others, as it does in the seed's one-at-a-time loop.
package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/pairvisor/pairvisor/ipc/listen"
)

func main() {
	if len(os.Args) != 3 || (os.Args[1] != "server" && os.Args[1] != "client") {
		fmt.Fprintln(os.Stderr, "usage: uds-echo server|client PATH")
		os.Exit(2)
	}
	if os.Args[1] == "server" {
		server(os.Args[2])
	} else {
		client(os.Args[2])
	}
}

func server(path string) {
	l, err := listen.New(path, listen.Config{}) // 0600
	if err != nil {
		log.Fatal(err)
	}
	defer l.Close() // removes the socket file
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	fmt.Println("starting up on", path)
	for {
		p, err := l.Accept(ctx)
		if err != nil {
			return // interrupted
		}
		go func() {
			conn := p.File // the connection; this goroutine owns it
			defer conn.Close()
			fmt.Printf("connection from pid %d uid %d\n", p.Cred.PID, p.Cred.UID)
			n, _ := io.Copy(conn, conn) // echo until the client closes
			fmt.Printf("echoed %d bytes to pid %d\n", n, p.Cred.PID)
		}()
	}
}

func client(path string) {
	fmt.Println("connecting to", path)
	sock, err := net.Dial("unix", path)
	if err != nil {
		log.Fatal(err)
	}
	defer sock.Close()

	message := []byte("This is the message.  It will be repeated.")
	fmt.Printf("sending %q\n", message)
	if _, err := sock.Write(message); err != nil {
		log.Fatal(err)
	}
	buf := make([]byte, 16)
	for received := 0; received < len(message); {
		n, err := sock.Read(buf)
		if err != nil {
			log.Fatal(err)
		}
		received += n
		fmt.Printf("received %q\n", buf[:n])
	}
	fmt.Println("closing socket")
}
