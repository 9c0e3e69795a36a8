// Package relay is the userspace datapath: it accepts connections on one
// listener, routes them (by SNI on a TLS listener), dials the upstream
// backend picked by weight and copies bytes both ways, terminating and
// originating TLS as the snapshot says.
//
// A connection goes through fixed stages: the PROXY protocol header when
// the listener requires one (its source becomes the client address); on a
// TLS listener a peek at the ClientHello to pick the route by SNI, then
// the handshake with that route's certificate; the route's circuit
// breaker; the dial; the PROXY header to the upstream when the mapping
// sends one; TLS origination; the copy. Every decision (route, backend,
// limits, timeouts) comes from the snapshot; the relay is the mechanism.
//
// One Server serves one snapshot.Listener. Cleartext on both sides is moved
// with splice(2) (io.ReaderFrom between two *net.TCPConn); anything else
// goes through a pooled 32 KiB buffer. Each connection costs at most two
// goroutines while copying, none after it closes.
//
// The relay knows nothing of YAML or Emissary: TLS configs come from the
// ServerTLS and ClientTLS builders and sockets to upstreams from the
// Dialer, all supplied by the caller.
package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/tcpmap/tcpmap/userspace/config"
	"github.com/tcpmap/tcpmap/userspace/snapshot"
)

// DefaultHandshakeTimeout bounds client and upstream TLS handshakes when
// Options.HandshakeTimeout is zero.
const DefaultHandshakeTimeout = 10 * time.Second

// Dialer opens the TCP connection to an upstream within timeout. The
// relay cancels ctx when the server is closed.
type Dialer interface {
	Dial(ctx context.Context, up snapshot.Upstream, timeout time.Duration) (*net.TCPConn, error)
}

// Options configure a Server. Dialer is required; ServerTLS is required for
// TLS listeners and ClientTLS for backends that originate TLS.
type Options struct {
	// Logger receives per-listener events; nil discards them.
	Logger *zap.Logger
	// Dialer opens upstream connections.
	Dialer Dialer
	// HandshakeTimeout bounds the client TLS handshake (a client that
	// sends nothing is closed after it) and, separately, the upstream TLS
	// handshake and the write of a PROXY header to the upstream. Zero
	// means DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// ProxyHeaderTimeout bounds the wait for the PROXY protocol header on
	// listeners that require one; it runs before, and apart from, the
	// TLS handshake timeout. Zero means DefaultProxyHeaderTimeout.
	ProxyHeaderTimeout time.Duration
	// Rand returns a uniform int in [0, n) for the weighted backend pick;
	// connections call it concurrently. Nil means math/rand/v2.IntN.
	Rand func(n int) int
	// ServerTLS builds the termination config of a route.
	ServerTLS func(*snapshot.TLSServer) (*tls.Config, error)
	// ClientTLS builds the origination config of a backend. The config
	// decides SNI and verification; the relay uses it as is.
	ClientTLS func(*snapshot.TLSClient) (*tls.Config, error)
	// ObserveDial, when set, is told how long each upstream dial took and
	// whether it failed (the connect-latency histogram).
	ObserveDial func(mapping config.Ref, took time.Duration, err error)
	// Splicer, when set, takes over the connections of cleartext
	// passthrough backends after the dial: the kernel moves their bytes.
	// Nil relays everything in this process.
	Splicer Splicer
	// SpliceAfterBytes and SpliceAfterTime, with a Splicer, relay each
	// connection here until it has moved that many bytes (both ways
	// together) or lived that long, whichever comes first, and only then
	// hand it to the Splicer: short connections do not pay for the
	// hand-off, and idle ones still end up in the kernel. Both zero hands
	// over right after the dial; a zero one does not trigger.
	SpliceAfterBytes int64
	SpliceAfterTime  time.Duration
}

// Server relays the connections of one listener. Its methods are safe for
// concurrent use.
type Server struct {
	opts      Options
	log       *zap.Logger
	key       string
	hsTimeout time.Duration
	// proxyTimeout bounds the PROXY header read.
	proxyTimeout time.Duration
	rand         func(int) int

	table atomic.Pointer[table]
	// updateMu serialises Updates so counters carry over from the table
	// actually replaced; it is not mu, since building TLS configs may be
	// slow and must not hold up accepts.
	updateMu sync.Mutex
	stats    listenerCounters

	// ctx is cancelled by Close and when Shutdown ends; it aborts dials
	// in progress.
	ctx    context.Context
	cancel context.CancelFunc
	quit   chan struct{} // closed when the server stops accepting

	// mu guards closing and the listener and connection sets, so that
	// Close reaches every socket and no connection starts after it.
	mu        sync.Mutex
	closing   bool
	listeners map[net.Listener]struct{}
	conns     map[*relayConn]struct{}
	handlers  sync.WaitGroup
}

// NewServer prepares a server for l, building every route's and backend's
// TLS config up front so a bad certificate fails here, naming the route or
// mapping, rather than on the first connection.
func NewServer(l snapshot.Listener, opts Options) (*Server, error) {
	if opts.Dialer == nil {
		return nil, fmt.Errorf("listener %s: relay options: Dialer is required", l.Key())
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	s := &Server{
		opts:      opts,
		key:       l.Key(),
		log:       opts.Logger.With(zap.String("listener", l.Key())),
		hsTimeout: opts.HandshakeTimeout,
		rand:      opts.Rand,
		quit:      make(chan struct{}),
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*relayConn]struct{}),
	}
	if s.hsTimeout <= 0 {
		s.hsTimeout = DefaultHandshakeTimeout
	}
	s.proxyTimeout = opts.ProxyHeaderTimeout
	if s.proxyTimeout <= 0 {
		s.proxyTimeout = DefaultProxyHeaderTimeout
	}
	if s.rand == nil {
		s.rand = rand.IntN
	}
	t, err := buildTable(l, &s.opts, nil, s.log)
	if err != nil {
		return nil, err
	}
	s.table.Store(t)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

// Update replaces routes and TLS configs for new connections. Live
// connections keep the routes they started with. l must have the same key
// (address and port) as the server's listener; on error nothing changes.
func (s *Server) Update(l snapshot.Listener) error {
	if l.Key() != s.key {
		return fmt.Errorf("listener %s: update with listener %s: key differs", s.key, l.Key())
	}
	s.updateMu.Lock()
	defer s.updateMu.Unlock()
	t, err := buildTable(l, &s.opts, s.table.Load(), s.log)
	if err != nil {
		return err
	}
	s.table.Store(t)
	return nil
}

// Serve accepts connections on ln until Close or Shutdown, then returns
// nil. Temporary accept errors (out of file descriptors, ...) are retried
// after a growing pause of up to one second; any other accept error is
// returned. Serve closes ln when it returns.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()

	var pause time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if s.stopped() {
				return nil
			}
			if !temporary(err) {
				return fmt.Errorf("listener %s: accept: %w", s.key, err)
			}
			s.stats.acceptErrors.Add(1)
			pause = min(max(2*pause, 5*time.Millisecond), time.Second)
			s.log.Warn("accept failed, retrying", zap.Duration("pause", pause), zap.Error(err))
			t := time.NewTimer(pause)
			select {
			case <-t.C:
			case <-s.quit:
				t.Stop()
				return nil
			}
			continue
		}
		pause = 0
		c := s.track(nc)
		if c == nil {
			nc.Close()
			continue
		}
		go s.handle(c)
	}
}

// temporary reports whether an accept error is worth retrying: resource
// exhaustion and aborted handshakes pass, the socket stays good.
func temporary(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS,
		syscall.ENOMEM, syscall.ECONNABORTED, syscall.EINTR, syscall.EPROTO, syscall.EPERM} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func (s *Server) stopped() bool {
	select {
	case <-s.quit:
		return true
	default:
		return false
	}
}

// track registers a new connection, nil when the server is closing.
func (s *Server) track(nc net.Conn) *relayConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return nil
	}
	c := newRelayConn(s, nc)
	s.conns[c] = struct{}{}
	s.handlers.Add(1)
	s.stats.accepted.Add(1)
	s.stats.active.Add(1)
	return c
}

func (s *Server) untrack(c *relayConn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.stats.active.Add(-1)
	s.handlers.Done()
}

// stopAccepting marks the server closing and closes its listeners; later
// calls do nothing.
func (s *Server) stopAccepting() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return
	}
	s.closing = true
	close(s.quit)
	for ln := range s.listeners {
		ln.Close()
	}
}

// StopAccepting closes the server's listening sockets now, so their ports
// are free when it returns; live connections go on (Shutdown waits for
// them).
func (s *Server) StopAccepting() { s.stopAccepting() }

// closeConns aborts dials and closes every connection.
func (s *Server) closeConns() {
	s.cancel()
	s.mu.Lock()
	conns := make([]*relayConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.close(false)
	}
}

// Shutdown stops accepting, then waits for live connections to end on
// their own. When ctx is done first it closes the rest and returns
// ctx.Err(). Either way no connection goroutine is left when it returns.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stopAccepting()
	done := make(chan struct{})
	go func() {
		s.handlers.Wait()
		close(done)
	}()
	select {
	case <-done:
		s.cancel()
		return nil
	case <-ctx.Done():
		s.closeConns()
		<-done
		return ctx.Err()
	}
}

// Close stops accepting and closes every connection at once.
func (s *Server) Close() error {
	s.stopAccepting()
	s.closeConns()
	s.handlers.Wait()
	return nil
}

// Stats returns the listener's counters and those of the routes and
// mappings in the current table.
func (s *Server) Stats() Stats {
	t := s.table.Load()
	st := Stats{
		Listener: s.stats.snapshot(),
		Routes:   make(map[string]RouteStats, len(t.routes)),
		Mappings: make(map[config.Ref]MappingStats, len(t.mappings)),
	}
	for i := range t.routes {
		rs := &t.routes[i]
		active, pending := rs.breaker.counts()
		st.Routes[rs.route.Host] = RouteStats{
			Active:                  int64(active),
			Pending:                 int64(pending),
			MaxConnections:          rs.limits.maxConnections,
			MaxPendingRequests:      rs.limits.maxPending,
			Priority:                rs.limits.priority,
			MaxConnectionsTrips:     rs.breaker.tripsMaxConn.Load(),
			MaxPendingRequestsTrips: rs.breaker.tripsPending.Load(),
		}
	}
	for ref, c := range t.mappings {
		st.Mappings[ref] = c.snapshot()
	}
	return st
}
