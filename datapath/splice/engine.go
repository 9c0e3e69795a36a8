// Package splice is tcpmap's kernel splice engine: it takes a connected
// client/upstream socket pair from the relay and moves its bytes in the
// kernel with the sockmap verdict of bpf/splice.c, watching only for the
// ends of the connection (FIN, RST, idle) and for the rare moments the
// verdict hands a congested direction to userspace.
//
// Per idle spliced pair the engine holds one small struct and no
// goroutine: one epoll goroutine watches every socket for
// EPOLLRDHUP|EPOLLHUP|EPOLLERR, one goroutine reads the verdict's ring
// buffer, and a goroutine with a pooled buffer exists only for a direction
// in pass mode. See datapath/README.md for the mechanism.
package splice

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/tcpmap/tcpmap/datapath"
)

// DefaultBound is the default per-pair bound on kernel memory, in bytes.
const DefaultBound = 4 << 20

// ErrClosed is returned by Splice once Shutdown or Close began.
var ErrClosed = errors.New("splice engine closed")

// ErrHandoffAborted is returned by Splice when a socket died in the middle
// of the hand-off after the kernel had already taken bytes from the other
// one. Unlike every other Splice error, the connections are then already
// reset and closed: the caller must not relay them.
var ErrHandoffAborted = errors.New("hand-off aborted: a socket closed during hand-off; both reset")

// Options configure Open.
type Options struct {
	// Datapath says where to pin; its Log defaults to Log.
	Datapath datapath.Options
	// Bound is the most kernel memory, in bytes, one pair may hold when
	// a fast sender meets a slow reader; default DefaultBound. Each
	// direction gets half: the verdict's gap (bytes redirected but not yet
	// in the destination's write queue, charged to no socket) plus the
	// source's receive buffer (bytes passed to userspace, which close the
	// TCP window when full) plus the destination's send buffer.
	Bound int
	// Gap is the verdict's gap bound per direction; zero means Bound/8.
	Gap int
	// RcvBuf and SndBuf are the receive and send buffer sizes set on
	// spliced sockets (the kernel's sk_rcvbuf and sk_sndbuf, which count
	// skb truesize); zero means 3·Bound/16 each, so that a direction holds
	// at most Bound/8 + 3·Bound/16 + 3·Bound/16 = Bound/2, and a pair
	// congested both ways at most Bound. A negative value leaves the
	// kernel's autotuning on, and with it no bound.
	RcvBuf, SndBuf int
	// PeerRoom makes the verdict hand a direction to userspace as soon as
	// the peer's send buffer is full, instead of queueing on the peer's
	// psock, whose worker retries only once per jiffy.
	PeerRoom bool
	// Resume hands a congested direction back to the kernel once
	// userspace has caught up. Off by default: under load a resumed
	// direction was seen to lose its connection (a reset after a 1 GiB
	// transfer, about 1 run in 8) and the cause is not yet understood, so
	// a direction that congests stays in userspace (pass mode, with the
	// same back-pressure) for the rest of its connection.
	Resume bool
	// Log receives engine events; nil discards.
	Log *zap.Logger
}

// Pair is a client/upstream connection to splice.
type Pair struct {
	// Client and Upstream are connected sockets. The caller has already
	// written to Upstream whatever it held (PROXY header, bytes read with
	// it) and stops using both: Splice takes ownership.
	Client, Upstream *net.TCPConn
	// Mapping labels the pair's traffic, e.g. "TCPMapping default/ssh";
	// MappingTotals sums by it.
	Mapping string
	// IdleTimeout closes the pair once neither direction moved a byte
	// for this long; zero disables it.
	IdleTimeout time.Duration
	// OnDone, if set, runs once when the pair is closed, on an engine
	// goroutine: it must not block.
	OnDone func(Result)
	// Context, if set, aborts the pair (both sockets reset) when done:
	// the relay's way to end spliced connections after a drain timeout.
	Context context.Context
}

// CloseReason says how a spliced pair ended.
type CloseReason int

// Close reasons.
const (
	Closed        CloseReason = iota // both directions ended with FIN
	ClientReset                      // the client reset (or its socket failed); upstream reset too
	UpstreamReset                    // the upstream reset (or its socket failed); client reset too
	IdleTimeout                      // nothing moved for Pair.IdleTimeout
	Aborted                          // Pair.Context done, Shutdown deadline or Close
)

func (r CloseReason) String() string {
	switch r {
	case Closed:
		return "closed"
	case ClientReset:
		return "client reset"
	case UpstreamReset:
		return "upstream reset"
	case IdleTimeout:
		return "idle timeout"
	case Aborted:
		return "aborted"
	}
	return fmt.Sprintf("reason(%d)", int(r))
}

// Traffic is one direction's byte and packet counts.
type Traffic struct {
	Bytes   uint64 // every payload byte, however moved
	Packets uint64 // skbs with payload seen by the verdict
	// PassedBytes are the bytes of Bytes that went through userspace in
	// pass mode; Bytes - PassedBytes moved in the kernel.
	PassedBytes uint64
}

// Result is what OnDone receives.
type Result struct {
	ClientToUpstream, UpstreamToClient Traffic
	Reason                             CloseReason
	Duration                           time.Duration
}

// Engine splices connection pairs. Its methods are safe for concurrent
// use.
type Engine struct {
	log  *zap.Logger
	obj  *datapath.Objects
	opts Options

	epfd   int
	wakefd int
	events *datapath.EventReader

	mu       sync.Mutex
	byCookie map[uint64]*conn // both sockets of every pair
	conns    map[*conn]struct{}
	mappings map[string]uint32
	labels   map[uint32]string
	closing  bool
	drained  chan struct{} // closed when closing and conns is empty
	idle     idleHeap
	idleT    *time.Timer

	userBytes   atomic.Uint64 // bytes copied in pass mode, all pairs ever
	lostSeen    uint64        // ProgStats.EventsLost already handled
	stopping    atomic.Bool
	stop        chan struct{}
	wg          sync.WaitGroup // engine goroutines and pass goroutines
	closeOnce   sync.Once
	closeErr    error
	gapBound    uint32
	pairFlags   datapath.PairFlags
	startedMono uint64
}

// Open loads the datapath (datapath.Load) and starts the engine's
// goroutines. Its errors from loading are *datapath.UnavailableError.
func Open(opts Options) (*Engine, error) {
	if opts.Log == nil {
		opts.Log = zap.NewNop()
	}
	if opts.Datapath.Log == nil {
		opts.Datapath.Log = opts.Log
	}
	if opts.Bound <= 0 {
		opts.Bound = DefaultBound
	}
	if opts.Gap <= 0 {
		opts.Gap = opts.Bound / 8
	}
	if opts.RcvBuf == 0 {
		opts.RcvBuf = opts.Bound * 3 / 16
	}
	if opts.SndBuf == 0 {
		opts.SndBuf = opts.Bound * 3 / 16
	}
	obj, err := datapath.Load(opts.Datapath)
	if err != nil {
		return nil, err
	}
	e := &Engine{
		log:         opts.Log,
		obj:         obj,
		opts:        opts,
		byCookie:    map[uint64]*conn{},
		conns:       map[*conn]struct{}{},
		mappings:    map[string]uint32{},
		labels:      map[uint32]string{},
		stop:        make(chan struct{}),
		gapBound:    uint32(opts.Gap),
		startedMono: datapath.MonotonicNow(),
		epfd:        -1,
		wakefd:      -1,
	}
	if opts.PeerRoom {
		e.pairFlags |= datapath.PairPeerRoom
	}
	if err := e.start(); err != nil {
		return nil, errors.Join(err, e.release())
	}
	e.log.Info("ebpf splice datapath loaded",
		zap.String("pin_dir", obj.PinDir()), zap.String("attach", string(obj.Attach())),
		zap.Int("bound", opts.Bound), zap.Int("gap", opts.Gap), zap.Int("rcvbuf", opts.RcvBuf), zap.Int("sndbuf", opts.SndBuf),
		zap.Bool("peer_room", opts.PeerRoom), zap.Strings("cleaned_stale_pins", obj.Cleaned))
	return e, nil
}

func (e *Engine) start() error {
	var err error
	if e.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return fmt.Errorf("epoll_create1: %w", err)
	}
	if e.wakefd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		return fmt.Errorf("eventfd: %w", err)
	}
	// Token 0 is the wake-up: no socket has cookie 0.
	if err := unix.EpollCtl(e.epfd, unix.EPOLL_CTL_ADD, e.wakefd,
		&unix.EpollEvent{Events: unix.EPOLLIN}); err != nil {
		return fmt.Errorf("epoll add eventfd: %w", err)
	}
	if e.events, err = e.obj.NewEventReader(); err != nil {
		return err
	}
	e.idleT = time.AfterFunc(time.Hour, e.scanIdle)
	e.idleT.Stop()
	e.wg.Add(3)
	go e.pollLoop()
	go e.eventLoop()
	go e.housekeeping()
	return nil
}

// Datapath gives access to the loaded objects (dumps for tests and the
// CLI).
func (e *Engine) Datapath() *datapath.Objects { return e.obj }

// mappingID returns the id of a mapping label, assigning one (and
// creating its totals) on first use. Called with e.mu held.
func (e *Engine) mappingID(label string) (uint32, error) {
	if id, ok := e.mappings[label]; ok {
		return id, nil
	}
	// The datapath assigns the id, so that the kernel's totals and the
	// listener tables the manager syncs use the same one.
	id, err := e.obj.MappingID(label)
	if err != nil {
		return 0, err
	}
	e.mappings[label] = id
	e.labels[id] = label
	return id, nil
}

// MappingTotals returns the traffic of every mapping label ever spliced,
// summed in the kernel over all its pairs, live and closed.
func (e *Engine) MappingTotals() (map[string]datapath.MappingTotal, error) {
	byID, err := e.obj.MappingTotals()
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make(map[string]datapath.MappingTotal, len(byID))
	for id, t := range byID {
		if label, ok := e.labels[id]; ok {
			out[label] = t
		}
	}
	return out, nil
}

// Stats are engine-wide counters.
type Stats struct {
	Pairs int // spliced pairs open now
	// UserspaceBytes counts the bytes the engine itself read and wrote
	// (pass mode) over its lifetime, all pairs: the proof of how much
	// payload did NOT bypass userspace.
	UserspaceBytes uint64
	Attach         datapath.AttachMode
	PinDir         string
}

// Stats returns engine-wide counters.
func (e *Engine) Stats() Stats {
	e.mu.Lock()
	n := len(e.conns)
	e.mu.Unlock()
	return Stats{Pairs: n, UserspaceBytes: e.userBytes.Load(), Attach: e.obj.Attach(), PinDir: e.obj.PinDir()}
}

// Shutdown stops accepting new pairs and waits until every spliced pair
// has closed on its own. When ctx ends first it aborts the remaining pairs
// (both sockets reset) and returns ctx's error. The datapath stays loaded
// until Close.
func (e *Engine) Shutdown(ctx context.Context) error {
	e.mu.Lock()
	e.closing = true
	if e.drained == nil {
		e.drained = make(chan struct{})
		if len(e.conns) == 0 {
			close(e.drained)
		}
	}
	drained := e.drained
	e.mu.Unlock()
	select {
	case <-drained:
		return nil
	case <-ctx.Done():
		e.abortAll()
		return ctx.Err()
	}
}

func (e *Engine) abortAll() {
	e.mu.Lock()
	all := make([]*conn, 0, len(e.conns))
	for c := range e.conns {
		all = append(all, c)
	}
	e.mu.Unlock()
	for _, c := range all {
		c.finish(Aborted, -1)
	}
}

// Close aborts every remaining pair, stops the engine's goroutines and
// unloads the datapath (detach, unpin, remove the pin directory). It
// returns every error, joined.
func (e *Engine) Close() error {
	e.closeOnce.Do(func() {
		e.mu.Lock()
		e.closing = true
		e.mu.Unlock()
		e.abortAll()
		e.closeErr = e.release()
	})
	return e.closeErr
}

// release stops the goroutines and frees what start and Open created.
func (e *Engine) release() error {
	var errs []error
	e.stopping.Store(true)
	close(e.stop)
	if e.idleT != nil {
		e.idleT.Stop()
	}
	if e.wakefd >= 0 {
		var one = [8]byte{1}
		_, _ = unix.Write(e.wakefd, one[:])
	}
	if e.events != nil {
		if err := e.events.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close event reader: %w", err))
		}
	}
	e.wg.Wait()
	for _, fd := range []int{e.epfd, e.wakefd} {
		if fd >= 0 {
			if err := unix.Close(fd); err != nil {
				errs = append(errs, err)
			}
		}
	}
	e.epfd, e.wakefd = -1, -1
	if err := e.obj.Close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// housekeeping rescans for pass episodes whose ring buffer event was
// lost. Without the rescan such a direction would stall: its bytes sit on
// the socket for userspace and nobody reads them.
func (e *Engine) housekeeping() {
	defer e.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-e.stop:
			return
		case <-t.C:
		}
		st, err := e.obj.Stats()
		if err != nil || st.EventsLost == e.lostSeen {
			continue
		}
		e.lostSeen = st.EventsLost
		e.log.Warn("pass events lost; rescanning spliced pairs", zap.Uint64("events_lost", st.EventsLost))
		e.mu.Lock()
		all := make([]*conn, 0, len(e.conns))
		for c := range e.conns {
			all = append(all, c)
		}
		e.mu.Unlock()
		for _, c := range all {
			for d := range 2 {
				if dir, err := e.obj.Dir(c.cookie[d]); err == nil && dir.Mode == datapath.ModePass {
					c.startPass(d)
				}
			}
		}
	}
}
