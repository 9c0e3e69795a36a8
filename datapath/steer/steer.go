// Package steer serves every mapped port from one listening socket per
// address family. The sk_lookup program of bpf/lookup.c assigns each new
// connection to a mapped (address, port) to the shared socket of its
// family; this package accepts on those sockets and hands each connection
// to the listener registered for its destination, which the accepted
// socket's local address still carries. Opening or closing a listener is
// then a map update, not a bind.
package steer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/tcpmap/tcpmap/datapath"
)

// ErrNoSocket: the family of an address has no shared socket (IPv6
// disabled, say); the caller binds a socket of its own instead.
var ErrNoSocket = errors.New("no shared listening socket for this address family")

// Steerer owns the shared listening sockets and dispatches their
// connections.
type Steerer struct {
	objs *datapath.Objects
	log  *zap.Logger

	socks [2]*net.TCPListener // by datapath.SocketIPv4/SocketIPv6; nil when unavailable

	mu     sync.Mutex
	routes map[datapath.Endpoint]*Listener
	closed bool
	wg     sync.WaitGroup
}

// New opens the shared sockets on loopback with a kernel-chosen port (the
// address they are bound to does not matter: sk_lookup assigns
// connections to them directly), puts them into listen_socks and starts
// accepting. A family whose socket cannot be opened is left out and its
// listeners bind their own sockets.
func New(objs *datapath.Objects, log *zap.Logger) (*Steerer, error) {
	if log == nil {
		log = zap.NewNop()
	}
	s := &Steerer{objs: objs, log: log, routes: map[datapath.Endpoint]*Listener{}}
	for idx, addr := range map[int]string{datapath.SocketIPv4: "127.0.0.1:0", datapath.SocketIPv6: "[::1]:0"} {
		network := "tcp4"
		if idx == datapath.SocketIPv6 {
			network = "tcp6"
		}
		// Go listens with MPTCP by default where the kernel has it, and
		// sockmap takes only plain TCP sockets.
		var lc net.ListenConfig
		lc.SetMultipathTCP(false)
		ln, err := lc.Listen(context.Background(), network, addr)
		if err != nil {
			log.Info("no shared listening socket for a family; its listeners bind their own",
				zap.String("network", network), zap.Error(err))
			continue
		}
		tl := ln.(*net.TCPListener)
		if err := putSocket(objs, idx, tl); err != nil {
			ln.Close()
			s.Close()
			return nil, err
		}
		s.socks[idx] = tl
	}
	if s.socks[datapath.SocketIPv4] == nil && s.socks[datapath.SocketIPv6] == nil {
		return nil, ErrNoSocket
	}
	for _, ln := range s.socks {
		if ln != nil {
			s.wg.Add(1)
			go s.acceptLoop(ln)
		}
	}
	return s, nil
}

func putSocket(objs *datapath.Objects, idx int, ln *net.TCPListener) error {
	raw, err := ln.SyscallConn()
	if err != nil {
		return err
	}
	var putErr error
	if err := raw.Control(func(fd uintptr) { putErr = objs.SetListenSocket(idx, int(fd)) }); err != nil {
		return err
	}
	return putErr
}

// Listen registers a listener for address:port (address "" means every
// address of both families) and starts steering its connections. name
// identifies the listener in the BPF tables. A port another process
// listens on is refused with EADDRINUSE, as a bind would be.
func (s *Steerer) Listen(name, address string, port int) (*Listener, error) {
	eps, err := s.endpoints(address, port)
	if err != nil {
		return nil, err
	}
	// A probe listen finds another process's socket on the port; without
	// it the sk_lookup program would silently take that process's traffic.
	probe, err := net.Listen("tcp", net.JoinHostPort(address, fmt.Sprint(port)))
	if err != nil {
		return nil, err
	}
	probe.Close()

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, net.ErrClosed
	}
	for _, ep := range eps {
		if _, taken := s.routes[ep]; taken {
			return nil, &net.OpError{Op: "listen", Net: "tcp", Addr: tcpAddr(ep), Err: syscall.EADDRINUSE}
		}
	}
	// Unbuffered: a connection is either taken by Accept or reset, never
	// left in a queue when the listener closes.
	l := &Listener{s: s, eps: eps, conns: make(chan *net.TCPConn), done: make(chan struct{})}
	for _, ep := range eps {
		s.routes[ep] = l
	}
	for _, ep := range eps {
		if err := s.objs.Steer(name, ep); err != nil {
			s.unregisterLocked(l)
			return nil, err
		}
	}
	return l, nil
}

func (s *Steerer) endpoints(address string, port int) ([]datapath.Endpoint, error) {
	if port <= 0 || port > 65535 {
		return nil, fmt.Errorf("port %d: want 1-65535", port)
	}
	if address == "" {
		var eps []datapath.Endpoint
		for idx, any := range map[int]netip.Addr{datapath.SocketIPv4: netip.IPv4Unspecified(), datapath.SocketIPv6: netip.IPv6Unspecified()} {
			if s.socks[idx] != nil {
				eps = append(eps, datapath.Endpoint{Addr: any, Port: uint16(port)})
			}
		}
		if len(eps) < 2 {
			// Half a wildcard would drop one family's clients.
			return nil, ErrNoSocket
		}
		return eps, nil
	}
	a, err := netip.ParseAddr(address)
	if err != nil {
		return nil, fmt.Errorf("address %q: %w", address, err)
	}
	ep := datapath.Endpoint{Addr: a.Unmap(), Port: uint16(port)}
	if s.socks[ep.Socket()] == nil {
		return nil, ErrNoSocket
	}
	return []datapath.Endpoint{ep}, nil
}

func (s *Steerer) unregisterLocked(l *Listener) {
	for _, ep := range l.eps {
		if s.routes[ep] == l {
			delete(s.routes, ep)
			if err := s.objs.Unsteer(ep); err != nil {
				s.log.Warn("stop steering", zap.Stringer("endpoint", tcpAddr(ep)), zap.Error(err))
			}
		}
	}
}

func (s *Steerer) acceptLoop(ln *net.TCPListener) {
	defer s.wg.Done()
	var backoff time.Duration
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and friends: wait and retry, like net/http.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("accept on shared socket", zap.Error(err), zap.Duration("retry_in", backoff))
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		s.dispatch(c)
	}
}

// dispatch hands c to the listener of its destination: the exact address
// first, then the family's wildcard, as the sk_lookup program matched it.
// The hand-over is a rendezvous with the listener's Accept: while a
// listener is slow to take its connections the accept loop waits and the
// kernel's accept queue holds the rest, the same back-pressure a listening
// socket of its own would give (resetting them instead would turn a burst
// into failed connections). A listener's Accept loop only starts handlers,
// so the wait is short, and it ends when the listener closes.
func (s *Steerer) dispatch(c *net.TCPConn) {
	local := c.LocalAddr().(*net.TCPAddr).AddrPort()
	ep := datapath.Endpoint{Addr: local.Addr().Unmap(), Port: local.Port()}
	s.mu.Lock()
	l := s.routes[ep]
	if l == nil {
		any := netip.IPv6Unspecified()
		if ep.Addr.Is4() {
			any = netip.IPv4Unspecified()
		}
		l = s.routes[datapath.Endpoint{Addr: any, Port: ep.Port}]
	}
	s.mu.Unlock()
	if l == nil {
		// Its listener closed between the kernel's steering and this
		// accept: refuse, as the closed listening socket would have.
		reset(c)
		return
	}
	select {
	case l.conns <- c:
	case <-l.done:
		reset(c)
	}
}

func reset(c *net.TCPConn) {
	_ = c.SetLinger(0)
	_ = c.Close()
}

// Close stops every listener and closes the shared sockets.
func (s *Steerer) Close() error {
	s.mu.Lock()
	s.closed = true
	for _, l := range s.routes {
		s.unregisterLocked(l)
		l.closeOnce.Do(func() { close(l.done) })
	}
	s.mu.Unlock()
	var errs []error
	for _, ln := range s.socks {
		if ln != nil {
			errs = append(errs, ln.Close())
		}
	}
	s.wg.Wait()
	return errors.Join(errs...)
}

// Listener is one steered listener; it implements net.Listener.
type Listener struct {
	s         *Steerer
	eps       []datapath.Endpoint
	conns     chan *net.TCPConn
	done      chan struct{}
	closeOnce sync.Once
}

var _ net.Listener = (*Listener)(nil)

// Accept waits for the next connection steered to the listener.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: net.ErrClosed}
	}
}

// Close stops steering the listener's endpoints at once (new connections
// are refused) and resets a connection being handed over.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() {
		l.s.mu.Lock()
		l.s.unregisterLocked(l)
		l.s.mu.Unlock()
		close(l.done)
	})
	return nil
}

// Addr is the listener's first endpoint.
func (l *Listener) Addr() net.Addr { return tcpAddr(l.eps[0]) }

func tcpAddr(ep datapath.Endpoint) *net.TCPAddr {
	return net.TCPAddrFromAddrPort(netip.AddrPortFrom(ep.Addr, ep.Port))
}
