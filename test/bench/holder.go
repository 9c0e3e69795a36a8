package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// holder is the idle service: a child process (the bench binary again) that
// accepts connections and holds them until their peer closes. The bench drives it
// over its stdin and stdout, one command and one reply line at a time:
// "count" → number held, "close" → closes them all, "ok". It exits when its
// stdin closes, so it cannot outlive the bench.
type holder struct {
	addr    string
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	replies *bufio.Reader
	mu      sync.Mutex
}

func startHolder(logPath string) (*holder, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("idle holder: own executable: %w", err)
	}
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("idle holder: log: %w", err)
	}
	defer lf.Close() // the child has its own copy
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), childEnv+"="+childIdleHolder)
	cmd.Stderr = lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("idle holder: start: %w", err)
	}
	// cmd.Wait closes the pipes, so it runs only in stop.
	h := &holder{cmd: cmd, stdin: stdin, replies: bufio.NewReader(stdout)}
	addr, err := h.readLine(10 * time.Second)
	if err != nil {
		h.stop()
		return nil, fmt.Errorf("idle holder: address: %w", err)
	}
	h.addr = addr
	return h, nil
}

// readLine reads one reply, failing after timeout (the child is then
// killed, which unblocks the read).
func (h *holder) readLine(timeout time.Duration) (string, error) {
	t := time.AfterFunc(timeout, func() { _ = h.cmd.Process.Kill() })
	defer t.Stop()
	line, err := h.replies.ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(line), nil
}

func (h *holder) call(command string) (string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, err := fmt.Fprintln(h.stdin, command); err != nil {
		return "", fmt.Errorf("idle holder %s: %w", command, err)
	}
	r, err := h.readLine(30 * time.Second)
	if err != nil {
		return "", fmt.Errorf("idle holder %s: %w", command, err)
	}
	return r, nil
}

// count returns how many connections the holder holds.
func (h *holder) count() (int64, error) {
	r, err := h.call("count")
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(r, 10, 64)
}

// closeAll closes every held connection.
func (h *holder) closeAll() error {
	r, err := h.call("close")
	if err == nil && r != "ok" {
		err = fmt.Errorf("idle holder close: reply %q", r)
	}
	return err
}

// stop closes the holder's stdin, which ends it, and kills it if it lingers.
func (h *holder) stop() {
	h.stdin.Close()
	exited := make(chan struct{})
	go func() {
		_ = h.cmd.Wait()
		close(exited)
	}()
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-h.cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	}
}

// idleHold is the holder's child side. Each held connection has a
// goroutine that waits for the peer to close and then closes too, so a proxy
// whose client went away is never left holding the upstream half (goroutines
// are cheap here: this process is not measured).
func idleHold() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ln.Close()
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				fmt.Fprintln(os.Stderr, "accept:", err)
				time.Sleep(10 * time.Millisecond)
				continue
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			go func() {
				_, _ = io.Copy(io.Discard, c)
				c.Close()
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
			}()
		}
	}()
	closeAll := func() {
		for c := range conns {
			c.Close()
			delete(conns, c)
		}
	}
	fmt.Println(ln.Addr().String())
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		mu.Lock()
		switch sc.Text() {
		case "count":
			fmt.Println(len(conns))
		case "close":
			closeAll()
			fmt.Println("ok")
		default:
			fmt.Println("unknown command")
		}
		mu.Unlock()
	}
	mu.Lock()
	closeAll()
	mu.Unlock()
	return nil
}
