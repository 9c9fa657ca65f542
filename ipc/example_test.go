//go:build linux

package ipc_test

import (
	"context"
	"log"
	"os"
	"os/exec"
	"time"

	"github.com/pairvisor/pairvisor/ipc"
)

// A parent starts a child with one end of a socketpair as its fd 3,
// establishes a Conn on the other end and pings the child. The child
// does the same with ipc.NewConn(ctx, os.NewFile(contract.ChannelFD, "channel"), cfg).
func Example() {
	parent, child, err := ipc.Socketpair()
	if err != nil {
		log.Fatal(err)
	}
	cmd := exec.Command("/usr/local/bin/my-worker")
	cmd.ExtraFiles = []*os.File{child} // fd 3 in the child
	err = cmd.Start()
	child.Close() // the child has its own copy now; ours would hide its exit
	if err != nil {
		parent.Close()
		log.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := ipc.NewConn(ctx, parent, ipc.ConnConfig{Name: "supervisor"}) // takes parent, even on error
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		log.Fatal(err)
	}
	rtt, err := conn.Ping(ctx)
	if err != nil {
		log.Print(err)
	} else {
		log.Printf("pid %d (%s) answered in %v", conn.Peer().PID, conn.Peer().Name, rtt)
	}

	conn.Close() // the child sees EOF
	cmd.Wait()
}
