// Command cellguard-threads starts N operating-system threads and holds them until SIGTERM:
// a stand-in for a stream server's per-peer threads, to see a node's PID limits act. Past
// the pod's pids.max the kernel refuses the next clone (EAGAIN) and the Go runtime exits
// with "failed to create new OS thread".
package main

import (
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"syscall"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: cellguard-threads N")
		os.Exit(64)
	}
	n, err := strconv.Atoi(os.Args[1])
	if err != nil || n < 0 {
		fmt.Fprintf(os.Stderr, "cellguard-threads: not a count: %q\n", os.Args[1])
		os.Exit(64)
	}
	started := make(chan struct{})
	for i := 0; i < n; i++ {
		go func() {
			runtime.LockOSThread() // this goroutine keeps its thread to itself
			started <- struct{}{}
			select {}
		}()
		<-started
	}
	fmt.Printf("cellguard-threads: holding %d threads\n", n)
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	<-signals
}
