package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The bench runs its reference Go relay and its idle-connection holder as
// child processes (its own binary again, selected by an environment
// variable): the relay so that its CPU and memory are measured apart from the
// bench's clients and servers, the holder for file descriptors.
const (
	childEnv        = "TCPMAP_BENCH_CHILD"
	childGoRelay    = "gorelay"
	childIdleHolder = "idlehold"
)

// runChild runs a child mode if the environment asks for one and reports
// whether it did; main and TestMain call it first.
func runChild() bool {
	var err error
	switch mode := os.Getenv(childEnv); mode {
	case "":
		return false
	case childGoRelay:
		err = goRelay(os.Args[1:])
	case childIdleHolder:
		err = idleHold()
	default:
		err = fmt.Errorf("unknown %s %q", childEnv, mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench child:", err)
		os.Exit(1)
	}
	return true
}

// goRelay listens on each "listen=upstream" pair and relays every
// connection with two io.Copy calls (which splice(2) between TCP sockets),
// the way most Go proxies do, until SIGTERM.
func goRelay(pairs []string) error {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for _, p := range pairs {
		listen, up, ok := strings.Cut(p, "=")
		if !ok {
			return fmt.Errorf("argument %q: want listen=upstream", p)
		}
		ln, err := net.Listen("tcp", listen)
		if err != nil {
			return err
		}
		lns = append(lns, ln)
		go serveRelay(ln, up)
	}
	fmt.Println("ready")
	<-sig
	return nil
}

func serveRelay(ln net.Listener, up string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go relayConn(c.(*net.TCPConn), up)
	}
}

func relayConn(c *net.TCPConn, up string) {
	defer c.Close()
	u, err := net.DialTimeout("tcp", up, 5*time.Second)
	if err != nil {
		return
	}
	uc := u.(*net.TCPConn)
	defer uc.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, _ = io.Copy(uc, c)
		_ = uc.CloseWrite()
	}()
	_, _ = io.Copy(c, uc)
	_ = c.CloseWrite()
	wg.Wait()
}
