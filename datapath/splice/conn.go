package splice

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/tcpmap/tcpmap/datapath"
)

// Sides of a pair. Direction d carries the bytes that arrive on side d to
// side 1-d, so direction client is client→upstream and is keyed in the
// BPF maps by the client socket's cookie.
const (
	client   = 0
	upstream = 1
)

var sideNames = [2]string{"client", "upstream"}

// drainTimeout bounds each write of bytes found queued at hand-off.
const drainTimeout = 10 * time.Second

// conn is one spliced pair. It is deliberately small: an idle pair costs
// this struct, two *net.TCPConn and a few map entries.
type conn struct {
	e       *Engine
	tcp     [2]*net.TCPConn
	raw     [2]syscall.RawConn
	cookie  [2]uint64
	mapping string
	mapID   uint32
	idle    time.Duration
	onDone  func(Result)
	startNs uint64 // CLOCK_MONOTONIC when Splice began
	// drained counts the bytes per source side that the hand-off found
	// queued and forwarded itself; they count as traffic in Result.
	drained [2]uint64

	mu      sync.Mutex
	stopCtx func() bool // unregisters Pair.Context's AfterFunc
	ready   bool        // hand-off complete; until then events are deferred
	pending [2]uint32   // epoll events that arrived during the hand-off
	passReq [2]bool     // pass events that arrived during the hand-off
	done    bool
	dir     [2]direction
	heapIdx int    // index in Engine.idle, -1 when not there
	due     uint64 // CLOCK_MONOTONIC ns of the next idle check
}

// direction is one direction's userspace state.
type direction struct {
	pre     uint64 // bytes of the source userspace read before hand-off
	dstBase uint64 // destination's entered() at hand-off
	eof     bool   // the source sent FIN (EPOLLRDHUP)
	shut    bool   // FIN passed on: shutdown(destination, SHUT_WR)
	passing bool   // a pass goroutine runs for this direction

	finTimer *time.Timer
	finDelay time.Duration

	// Pass mode, touched only by the pass goroutine except userWritten,
	// which the FIN check reads.
	userRead    uint64
	userWritten atomic.Uint64
	resumeGen   uint32
	published   uint64 // Ctl.UserWritten last written to the map
	gapChecked  uint64 // Dir.Redirected the last gap wait covered
}

// ctrl runs f on a side's file descriptor while Go guarantees it stays
// open (the descriptor number cannot be reused under f).
func (c *conn) ctrl(side int, f func(fd int) error) error {
	var ferr error
	if err := c.raw[side].Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// Splice hands a connected pair to the kernel. It returns quickly and
// starts no goroutine for the pair. On error the caller can relay the pair
// in userspace (except after ErrHandoffAborted): no byte was lost or
// reordered, though the socket buffer sizes are fixed, deadlines are
// cleared, and bytes that were queued may already have been forwarded.
//
// The hand-off never loses or reorders a byte. Bytes the caller read are
// already written to the other side, in its write queue ahead of anything
// that follows. Both sockets are then held (SO_RCVLOWAT) so that what
// arrives stays queued; what is queued is forwarded here (drain); the
// pair's entries are written and both sockets enter sock_hash; releasing
// the hold runs the verdict over whatever arrived meanwhile, oldest first.
func (e *Engine) Splice(p Pair) error {
	if p.Client == nil || p.Upstream == nil {
		return errors.New("splice: client and upstream connections are required")
	}
	e.mu.Lock()
	closing := e.closing
	e.mu.Unlock()
	if closing {
		return ErrClosed
	}
	c := &conn{
		e:       e,
		tcp:     [2]*net.TCPConn{p.Client, p.Upstream},
		mapping: p.Mapping,
		idle:    p.IdleTimeout,
		onDone:  p.OnDone,
		heapIdx: -1,
		startNs: datapath.MonotonicNow(),
	}
	for s := range 2 {
		raw, err := c.tcp[s].SyscallConn()
		if err != nil {
			return fmt.Errorf("splice: %s socket: %w", sideNames[s], err)
		}
		c.raw[s] = raw
		err = c.ctrl(s, func(fd int) error {
			ti, err := tcpInfo(fd)
			if err != nil {
				return err
			}
			if ti.State != unix.BPF_TCP_ESTABLISHED {
				return errNotEstablished
			}
			c.cookie[s], err = cookieOf(fd)
			return err
		})
		if err != nil {
			return fmt.Errorf("splice: %s socket: %w", sideNames[s], err)
		}
	}

	e.mu.Lock()
	if e.closing {
		e.mu.Unlock()
		return ErrClosed
	}
	id, err := e.mappingID(p.Mapping)
	if err == nil {
		c.mapID = id
		e.byCookie[c.cookie[client]] = c
		e.byCookie[c.cookie[upstream]] = c
		e.conns[c] = struct{}{}
	}
	e.mu.Unlock()
	if err != nil {
		return fmt.Errorf("splice: mapping %q: %w", p.Mapping, err)
	}

	if err := c.handoff(); err != nil {
		if errors.Is(err, ErrHandoffAborted) {
			c.finish(Aborted, -1)
			return err
		}
		e.forget(c)
		return fmt.Errorf("splice: %w", err)
	}
	if c.idle > 0 {
		e.watchIdle(c)
	}
	// Events that came during the hand-off were held back, so that a
	// failing hand-off never closes the caller's connections; act on them
	// now.
	c.mu.Lock()
	if p.Context != nil {
		c.stopCtx = context.AfterFunc(p.Context, func() { c.finish(Aborted, -1) })
	}
	c.ready = true
	pending, passReq := c.pending, c.passReq
	c.mu.Unlock()
	for s := range 2 {
		if pending[s] != 0 {
			c.onEnd(s, pending[s])
		}
		if passReq[s] {
			c.startPass(s)
		}
	}
	return nil
}

// handoff moves the pair into the kernel; on error (other than
// ErrHandoffAborted) it undoes everything but the buffer sizes.
func (c *conn) handoff() (err error) {
	e := c.e
	if err := e.obj.Pair(c.cookie[client], c.cookie[upstream], c.mapID, e.gapBound, e.pairFlags); err != nil {
		return err
	}
	held := [2]bool{}
	watched := [2]bool{}
	defer func() {
		if err == nil || errors.Is(err, ErrHandoffAborted) {
			return
		}
		for s := range 2 {
			if watched[s] {
				_ = c.ctrl(s, func(fd int) error { return unix.EpollCtl(e.epfd, unix.EPOLL_CTL_DEL, fd, nil) })
			}
			if held[s] {
				_ = c.ctrl(s, func(fd int) error { return setRcvlowat(fd, 1) })
			}
		}
		_ = e.obj.Unpair(c.cookie[client], c.cookie[upstream])
	}()

	// Deadlines the caller set (handshake, PROXY header) would fail the
	// drain's and pass mode's reads and writes at once.
	for s := range 2 {
		_ = c.tcp[s].SetDeadline(time.Time{})
	}
	defer func() {
		for s := range 2 {
			_ = c.tcp[s].SetWriteDeadline(time.Time{})
		}
	}()
	for s := range 2 {
		err := c.ctrl(s, func(fd int) error {
			// Fixed buffers first: they bound kernel memory and keep the
			// hold below from resizing the receive buffer.
			if e.opts.RcvBuf > 0 {
				if err := setBuf(fd, unix.SO_RCVBUF, unix.SO_RCVBUFFORCE, e.opts.RcvBuf); err != nil {
					return err
				}
			}
			if e.opts.SndBuf > 0 {
				if err := setBuf(fd, unix.SO_SNDBUF, unix.SO_SNDBUFFORCE, e.opts.SndBuf); err != nil {
					return err
				}
			}
			if err := setRcvlowat(fd, holdLowat); err != nil {
				return err
			}
			held[s] = true
			return nil
		})
		if err != nil {
			return fmt.Errorf("%s socket: %w", sideNames[s], err)
		}
	}
	// Forward what is already queued, in userspace. The verdict would get
	// a partly read skb whole (tcp_read_skb ignores how much of the head
	// skb the caller already read), redirecting bytes the caller consumed a
	// second time. After the drain only whole skbs are queued, and the
	// verdict sees every later byte exactly once.
	if err := c.drain(); err != nil {
		return err
	}
	// With both sockets held, fix the baselines the FIN rule and the gap
	// are counted from: bytes the caller consumed from each source, and
	// bytes already in each destination's write queue.
	for s := range 2 {
		err := c.ctrl(s, func(fd int) (err error) {
			c.dir[s].pre, c.dir[1-s].dstBase, err = baselines(fd)
			return err
		})
		if err != nil {
			return fmt.Errorf("%s socket: %w", sideNames[s], err)
		}
	}
	// Watch before inserting, so that an end of stream arriving during
	// the hand-off is reported (epoll reports the current state on ADD).
	for s := range 2 {
		err := c.ctrl(s, func(fd int) error {
			tok := c.cookie[s]
			ev := unix.EpollEvent{Events: unix.EPOLLRDHUP | unix.EPOLLET,
				Fd: int32(uint32(tok)), Pad: int32(uint32(tok >> 32))}
			return unix.EpollCtl(e.epfd, unix.EPOLL_CTL_ADD, fd, &ev)
		})
		if err != nil {
			return fmt.Errorf("%s socket: epoll add: %w", sideNames[s], err)
		}
		watched[s] = true
	}
	if err := c.ctrl(client, func(fd int) error { return e.obj.AddSocket(c.cookie[client], fd) }); err != nil {
		return fmt.Errorf("client socket: %w", err)
	}
	if err := c.ctrl(upstream, func(fd int) error { return e.obj.AddSocket(c.cookie[upstream], fd) }); err != nil {
		// The client is in sock_hash. Taking it out again drops its psock
		// and whatever the verdict queued there, so only do it if the
		// verdict has not run (the hold makes that the normal case).
		if d, derr := e.obj.Dir(c.cookie[client]); derr == nil && d.Redirected == 0 && d.Passed == 0 {
			if rerr := e.obj.RemoveSocket(c.cookie[client]); rerr == nil {
				return fmt.Errorf("upstream socket: %w", err)
			}
		}
		return fmt.Errorf("%w: upstream socket: %v", ErrHandoffAborted, err)
	}
	// Release: lowering SO_RCVLOWAT signals the socket readable, and the
	// verdict takes the queued bytes in order.
	for s := range 2 {
		if err := c.ctrl(s, func(fd int) error { return setRcvlowat(fd, 1) }); err != nil {
			return fmt.Errorf("%w: release %s socket: %v", ErrHandoffAborted, sideNames[s], err)
		}
	}
	return nil
}

// drain forwards the bytes queued on each held socket to the other one.
// It stops after a read that did not fill the buffer: tcp_recvmsg only
// stops short of the buffer at an skb boundary, so no partly read skb is
// left behind, and skbs arriving later are whole. Usually the first look
// (SIOCINQ) finds nothing and no buffer is taken.
func (c *conn) drain() error {
	var bp *[]byte
	defer func() {
		if bp != nil {
			passBufs.Put(bp)
		}
	}()
	for s := range 2 {
		for {
			var n int
			var rerr error
			err := c.ctrl(s, func(fd int) error {
				if bp == nil {
					inq, err := unix.IoctlGetInt(fd, unix.SIOCINQ)
					if err != nil || inq == 0 {
						rerr = unix.EAGAIN
						return err
					}
					bp = passBufs.Get().(*[]byte)
				}
				for {
					n, rerr = unix.Read(fd, *bp)
					if rerr != unix.EINTR {
						return nil
					}
				}
			})
			if err != nil {
				return fmt.Errorf("%s socket: drain: %w", sideNames[s], err)
			}
			if rerr != nil && rerr != unix.EAGAIN {
				return fmt.Errorf("%s socket: drain: %w", sideNames[s], rerr)
			}
			if rerr != nil || n <= 0 {
				break // empty, or end of stream (sock_hash will refuse the socket)
			}
			// A stuck peer must not hang Splice.
			_ = c.tcp[1-s].SetWriteDeadline(time.Now().Add(drainTimeout))
			if _, err := c.tcp[1-s].Write((*bp)[:n]); err != nil {
				return fmt.Errorf("%s socket: forward queued bytes: %w", sideNames[1-s], err)
			}
			c.drained[s] += uint64(n)
			c.e.userBytes.Add(uint64(n))
			if n < len(*bp) {
				break
			}
		}
	}
	return nil
}

// forget removes a pair from the engine's tables.
func (e *Engine) forget(c *conn) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.byCookie[c.cookie[client]] == c {
		delete(e.byCookie, c.cookie[client])
	}
	if e.byCookie[c.cookie[upstream]] == c {
		delete(e.byCookie, c.cookie[upstream])
	}
	delete(e.conns, c)
	e.unwatchIdle(c)
	if e.closing && e.drained != nil && len(e.conns) == 0 {
		select {
		case <-e.drained:
		default:
			close(e.drained)
		}
	}
}

func (e *Engine) lookup(cookie uint64) (*conn, int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	c := e.byCookie[cookie]
	if c == nil {
		return nil, 0
	}
	if c.cookie[client] == cookie {
		return c, client
	}
	return c, upstream
}

// onEnd handles EPOLLRDHUP/EPOLLHUP/EPOLLERR on one side.
func (c *conn) onEnd(side int, events uint32) {
	c.mu.Lock()
	if !c.ready {
		c.pending[side] |= events
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	var sockErr error
	if events&(unix.EPOLLERR|unix.EPOLLHUP) != 0 {
		if err := c.ctrl(side, soError); err != nil {
			sockErr = err
		}
	}
	if events&unix.EPOLLERR != 0 || sockErr != nil {
		reason := ClientReset
		if side == upstream {
			reason = UpstreamReset
		}
		c.log().Debug("spliced socket reset", zap.String("side", sideNames[side]), zap.Error(sockErr))
		c.finish(reason, side)
		return
	}
	c.mu.Lock()
	c.dir[side].eof = true
	c.mu.Unlock()
	c.tryFin(side)
}

// tryFin passes the source's FIN of direction d on to its destination
// once nothing the source sent can still be on its way:
//   - the verdict has seen every byte the source received (TCP counts
//     the FIN in tcpi_bytes_received, hence the -1),
//   - userspace wrote every byte the verdict passed to it,
//   - every redirected or written byte entered the destination's write
//     queue (the gap is zero).
//
// Shutting down earlier lets the FIN overtake bytes still queued on the
// destination's psock; the prototype lost 60 of 64 MiB that way. Until
// then it checks again on a timer that backs off from 200µs to 50ms.
func (c *conn) tryFin(d int) {
	c.mu.Lock()
	ds := &c.dir[d]
	if c.done || !ds.eof || ds.shut {
		c.mu.Unlock()
		return
	}
	ready, err := c.finReady(d)
	if err != nil {
		c.mu.Unlock()
		return // the pair is being torn down
	}
	if !ready {
		if ds.finDelay == 0 {
			ds.finDelay = 200 * time.Microsecond
		} else if ds.finDelay < 50*time.Millisecond {
			ds.finDelay *= 2
		}
		if ds.finTimer == nil {
			ds.finTimer = time.AfterFunc(ds.finDelay, func() { c.tryFin(d) })
		} else {
			ds.finTimer.Reset(ds.finDelay)
		}
		c.mu.Unlock()
		return
	}
	err = c.ctrl(1-d, func(fd int) error { return unix.Shutdown(fd, unix.SHUT_WR) })
	ds.shut = true
	both := c.dir[0].shut && c.dir[1].shut
	c.mu.Unlock()
	if err != nil && !errors.Is(err, unix.ENOTCONN) {
		c.log().Debug("shutdown of spliced socket failed", zap.String("side", sideNames[1-d]), zap.Error(err))
	}
	if both {
		c.finish(Closed, -1)
	}
}

func (c *conn) finReady(d int) (bool, error) {
	ds := &c.dir[d]
	st, err := c.e.obj.Dir(c.cookie[d])
	if err != nil {
		return false, err
	}
	var recv uint64
	if err := c.ctrl(d, func(fd int) error {
		ti, err := tcpInfo(fd)
		if err == nil {
			recv = ti.Bytes_received
		}
		return err
	}); err != nil {
		return false, err
	}
	if recv < ds.pre+1 || recv-1-ds.pre != st.Redirected+st.Passed {
		return false, nil
	}
	uw := ds.userWritten.Load()
	if uw != st.Passed {
		return false, nil
	}
	var in uint64
	if err := c.ctrl(1-d, func(fd int) error {
		ti, err := tcpInfo(fd)
		if err == nil {
			in = entered(ti)
		}
		return err
	}); err != nil {
		return false, err
	}
	return in-ds.dstBase >= st.Redirected+uw, nil
}

// finish closes the pair once: final counters, sockets (reset when
// asked), map entries, engine tables, then OnDone. rstSide is the side
// that failed (the other one is reset) or -1.
func (c *conn) finish(reason CloseReason, rstSide int) {
	c.mu.Lock()
	if c.done {
		c.mu.Unlock()
		return
	}
	c.done = true
	for d := range 2 {
		if t := c.dir[d].finTimer; t != nil {
			t.Stop()
		}
	}
	stopCtx := c.stopCtx
	c.mu.Unlock()
	if stopCtx != nil {
		stopCtx()
	}
	e := c.e
	var st [2]datapath.Dir
	for d := range 2 {
		st[d], _ = e.obj.Dir(c.cookie[d])
	}
	for s := range 2 {
		_ = c.ctrl(s, func(fd int) error {
			_ = unix.EpollCtl(e.epfd, unix.EPOLL_CTL_DEL, fd, nil)
			if reason == Aborted || (rstSide >= 0 && s != rstSide) {
				_ = lingerZero(fd)
			}
			return nil
		})
	}
	// Closing removes the sockets from sock_hash (the kernel does it);
	// only then do the pair's entries go, so the verdict never runs
	// without them on a live socket.
	_ = c.tcp[client].Close()
	_ = c.tcp[upstream].Close()
	if err := e.obj.Forget(c.cookie[client], c.cookie[upstream]); err != nil {
		c.log().Warn("delete spliced pair entries", zap.Error(err))
	}
	e.forget(c)
	if c.onDone != nil {
		res := Result{Reason: reason}
		if c.startNs != 0 {
			res.Duration = time.Duration(datapath.MonotonicNow() - c.startNs)
		}
		res.ClientToUpstream = traffic(st[client])
		res.UpstreamToClient = traffic(st[upstream])
		res.ClientToUpstream.Bytes += c.drained[client]
		res.ClientToUpstream.PassedBytes += c.drained[client]
		res.UpstreamToClient.Bytes += c.drained[upstream]
		res.UpstreamToClient.PassedBytes += c.drained[upstream]
		c.onDone(res)
	}
}

func traffic(d datapath.Dir) Traffic {
	return Traffic{Bytes: d.Redirected + d.Passed, Packets: d.Packets, PassedBytes: d.Passed}
}

func (c *conn) log() *zap.Logger {
	return c.e.log.With(zap.Uint64("client_cookie", c.cookie[client]), zap.String("mapping", c.mapping))
}
