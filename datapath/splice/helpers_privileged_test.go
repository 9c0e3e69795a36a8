package splice

import (
	"context"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/tcpmap/tcpmap/datapath"
	"github.com/tcpmap/tcpmap/datapath/internal/privtest"
)

// openEngine opens an engine on a private pin directory and closes it at
// the end of the test, failing the test on any close error.
func openEngine(tb testing.TB, opts Options) *Engine {
	tb.Helper()
	privtest.Require(tb)
	if opts.Datapath.PinDir == "" {
		opts.Datapath.PinDir = privtest.PinDir(tb)
	}
	if opts.Log == nil {
		opts.Log = zaptest.NewLogger(tb, zaptest.Level(zap.InfoLevel))
	}
	e, err := Open(opts)
	if err != nil {
		tb.Fatalf("open engine: %v", err)
	}
	tb.Cleanup(func() {
		if err := e.Close(); err != nil {
			tb.Errorf("close engine: %v", err)
		}
		if _, err := os.Stat(opts.Datapath.PinDir); !os.IsNotExist(err) {
			tb.Errorf("pin directory %s left after Close (stat: %v)", opts.Datapath.PinDir, err)
		}
	})
	return e
}

// testPair is a spliced connection: the test's client and server ends,
// with the proxy's two sockets in between handed to the engine.
type testPair struct {
	client, server *net.TCPConn // the outer ends
	proxyC, proxyU *net.TCPConn // the proxy's sockets (owned by the engine)
	done           chan Result
}

type pairOpts struct {
	idle time.Duration
	// beforeSplice runs with the connections up but not yet spliced:
	// it may write early bytes, read a banner in the "relay", etc.
	beforeSplice func(tp *testPair)
	mapping      string
	ctx          context.Context
}

// listeners are shared by the pairs of one test.
type rig struct {
	tb      testing.TB
	e       *Engine
	front   *net.TCPListener // the proxy's listener
	backend *net.TCPListener // the upstream server's listener
}

func newRig(tb testing.TB, e *Engine) *rig {
	tb.Helper()
	r := &rig{tb: tb, e: e}
	r.front = listen(tb)
	r.backend = listen(tb)
	return r
}

func listen(tb testing.TB) *net.TCPListener {
	tb.Helper()
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatalf("listen: %v", err)
	}
	tb.Cleanup(func() { l.Close() })
	return l
}

func accept(tb testing.TB, l *net.TCPListener) *net.TCPConn {
	tb.Helper()
	_ = l.SetDeadline(time.Now().Add(10 * time.Second))
	c, err := l.AcceptTCP()
	if err != nil {
		tb.Fatalf("accept: %v", err)
	}
	return c
}

func dial(tb testing.TB, addr net.Addr) *net.TCPConn {
	tb.Helper()
	d := net.Dialer{Timeout: 10 * time.Second}
	c, err := d.Dial("tcp", addr.String())
	if err != nil {
		tb.Fatalf("dial: %v", err)
	}
	return c.(*net.TCPConn)
}

// pair connects client → proxy → server and splices the proxy's sockets.
func (r *rig) pair(o pairOpts) *testPair {
	r.tb.Helper()
	tp := &testPair{done: make(chan Result, 1)}
	tp.client = dial(r.tb, r.front.Addr())
	tp.proxyC = accept(r.tb, r.front)
	tp.proxyU = dial(r.tb, r.backend.Addr())
	tp.server = accept(r.tb, r.backend)
	r.tb.Cleanup(func() {
		tp.client.Close()
		tp.server.Close()
	})
	if o.beforeSplice != nil {
		o.beforeSplice(tp)
	}
	if o.mapping == "" {
		o.mapping = "TCPMapping test/" + strings.ReplaceAll(r.tb.Name(), "/", "-")
	}
	err := r.e.Splice(Pair{
		Client: tp.proxyC, Upstream: tp.proxyU, Mapping: o.mapping, IdleTimeout: o.idle,
		OnDone: func(res Result) { tp.done <- res }, Context: o.ctx,
	})
	if err != nil {
		tp.proxyC.Close()
		tp.proxyU.Close()
		r.tb.Fatalf("splice: %v", err)
	}
	return tp
}

// wait returns the pair's Result or fails after d.
func (tp *testPair) wait(tb testing.TB, d time.Duration) Result {
	tb.Helper()
	select {
	case res := <-tp.done:
		return res
	case <-time.After(d):
		tb.Fatalf("pair not closed within %v", d)
		return Result{}
	}
}

// readAllTimeout reads c to EOF within d.
func readAllTimeout(c net.Conn, d time.Duration) ([]byte, error) {
	_ = c.SetReadDeadline(time.Now().Add(d))
	return io.ReadAll(c)
}

var _ = datapath.ModePass
