package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// service is one upstream port of the bench; every proxy maps one of its
// own ports to each.
type service string

const (
	svcSink service = "sink" // reads and discards (bulk throughput)
	svcEcho service = "echo" // echoes (request/response latency)
	svcConn service = "conn" // 64 bytes in, 64 bytes out, waits for EOF (connections/s)
	svcIdle service = "idle" // accepts and holds (idle RSS)
	svcSlow service = "slow" // reads 64 KiB every 20 ms (slow reader)
)

// services lists every upstream service in a stable order.
var services = []service{svcSink, svcEcho, svcConn, svcIdle, svcSlow}

const (
	msgSize      = 64        // request/response and connection message size
	bulkBufSize  = 256 << 10 // client write and sink read buffer
	slowChunk    = 64 << 10  // slow reader: bytes per read
	slowInterval = 20 * time.Millisecond
)

// upstream is the bench's own server side: one listener per service on
// 127.0.0.1, counters the measurements read, and every accepted connection
// tracked so that close leaves nothing behind. The idle service runs in a
// child process (see holder.go): the idle test needs a descriptor per
// connection on each side, more than one process may hold here.
type upstream struct {
	lns   map[service]net.Listener
	addrs map[service]string
	idle  *holder

	sinkBytes atomic.Int64 // bytes the sink has read, all connections
	slowBytes atomic.Int64 // bytes the slow reader has read

	mu     sync.Mutex
	conns  map[net.Conn]service
	closed bool
	wg     sync.WaitGroup
}

// startUpstream listens on a free loopback port per service and serves;
// the idle service's holder logs to logPath.
func startUpstream(logPath string) (*upstream, error) {
	u := &upstream{lns: map[service]net.Listener{}, addrs: map[service]string{}, conns: map[net.Conn]service{}}
	h, err := startHolder(logPath)
	if err != nil {
		return nil, err
	}
	u.idle = h
	u.addrs[svcIdle] = h.addr
	for _, s := range services {
		if s == svcIdle {
			continue
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			u.close()
			return nil, fmt.Errorf("upstream %s: listen: %w", s, err)
		}
		u.lns[s] = ln
		u.addrs[s] = ln.Addr().String()
	}
	for s, ln := range u.lns {
		u.wg.Add(1)
		go u.accept(s, ln)
	}
	return u, nil
}

func (u *upstream) accept(s service, ln net.Listener) {
	defer u.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and friends: back off rather than spin.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if !u.track(c, s) {
			c.Close()
			return
		}
		u.wg.Add(1)
		go func() {
			defer u.wg.Done()
			defer u.untrack(c)
			u.serve(s, c)
		}()
	}
}

func (u *upstream) track(c net.Conn, s service) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return false
	}
	u.conns[c] = s
	return true
}

func (u *upstream) untrack(c net.Conn) {
	u.mu.Lock()
	delete(u.conns, c)
	u.mu.Unlock()
	c.Close()
}

func (u *upstream) serve(s service, c net.Conn) {
	switch s {
	case svcSink:
		buf := make([]byte, bulkBufSize)
		for {
			n, err := c.Read(buf)
			u.sinkBytes.Add(int64(n))
			if err != nil {
				return
			}
		}
	case svcEcho:
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				if _, werr := c.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	case svcConn:
		buf := make([]byte, msgSize)
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
		if _, err := c.Write(buf); err != nil {
			return
		}
		// The client closes first, so TIME_WAIT lands on the dialling side
		// where loopback tcp_tw_reuse recycles it.
		_, _ = io.Copy(io.Discard, c)
	case svcSlow:
		buf := make([]byte, slowChunk)
		t := time.NewTicker(slowInterval)
		defer t.Stop()
		for range t.C {
			n, err := io.ReadFull(c, buf)
			u.slowBytes.Add(int64(n))
			if err != nil {
				return
			}
		}
	}
}

// closeService closes every accepted connection of one service (the idle
// and slow tests end this way).
func (u *upstream) closeService(s service) error {
	if s == svcIdle {
		return u.idle.closeAll()
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	for c, cs := range u.conns {
		if cs == s {
			c.Close()
		}
	}
	return nil
}

// close stops the listeners, closes every connection and waits for every
// goroutine.
func (u *upstream) close() {
	u.mu.Lock()
	u.closed = true
	for c := range u.conns {
		c.Close()
	}
	u.mu.Unlock()
	for _, ln := range u.lns {
		ln.Close()
	}
	u.wg.Wait()
	if u.idle != nil {
		u.idle.stop()
	}
}
