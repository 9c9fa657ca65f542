// Command socketpair-pingpong is the seed's socketpair_fork.py done the
// Go way. Go cannot safely fork a running program, so the parent
// re-executes itself instead and hands the child its end of the
// socketpair as fd 3 (the first of exec.Cmd.ExtraFiles). An environment
// variable tells the two roles apart.
//
//	go run ./examples/socketpair-pingpong
package main

import (
	"fmt"
	"log"
	"os"
	"os/exec"

	"github.com/pairvisor/pairvisor/ipc"
)

const roleEnv = "PINGPONG_CHILD"

func main() {
	if os.Getenv(roleEnv) == "1" {
		child()
		return
	}
	parent()
}

func parent() {
	parentEnd, childEnd, err := ipc.Socketpair() // both ends close-on-exec
	if err != nil {
		log.Fatal(err)
	}
	defer parentEnd.Close()

	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), roleEnv+"=1")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.ExtraFiles = []*os.File{childEnd} // becomes fd 3 in the child
	if err := cmd.Start(); err != nil {
		log.Fatal(err)
	}
	childEnd.Close() // the child has its copy; ours would hide its EOF

	fmt.Println("in parent, sending message")
	if _, err := parentEnd.Write([]byte("ping")); err != nil {
		log.Fatal(err)
	}
	buf := make([]byte, 1024)
	n, err := parentEnd.Read(buf)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("response from child: %q\n", buf[:n])
	if err := cmd.Wait(); err != nil {
		log.Fatal(err)
	}
}

func child() {
	sock := os.NewFile(3, "socketpair")
	defer sock.Close()
	fmt.Println("in child, waiting for message")
	buf := make([]byte, 1024)
	n, err := sock.Read(buf)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("message from parent: %q\n", buf[:n])
	if _, err := sock.Write([]byte("pong")); err != nil {
		log.Fatal(err)
	}
}
