package relay

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// pastDeadline is a read deadline already gone: it wakes a blocked read at
// once, and every later read fails until it is cleared.
var pastDeadline = time.Unix(1, 0)

// pauseWriteTimeout bounds a write that is under way when the pause for a
// hand-off begins. The other direction has stopped reading by then; if
// this write waits on a peer that waits on that direction (an echo under
// load), only giving up the attempt breaks the wait.
const pauseWriteTimeout = 200 * time.Millisecond

// phaseEnd is how one direction of a deferred splice ended a phase.
type phaseEnd int

const (
	phasePaused  phaseEnd = iota // stopped at a read; every byte read was written
	phaseStalled                 // a write outlasted pauseWriteTimeout; bytes are left over
	phaseEOF                     // the source ended; its destination is half-closed
	phaseFailed                  // reset or closed; the connection is closed
)

// deferredDir is one direction of a deferred splice: direction 0 carries
// client bytes to the upstream, direction 1 the answer back.
type deferredDir struct {
	src, dst *endpoint
	pending  []byte // read but not yet written: the PROXY prefix, or a stalled write's rest
	ended    bool
}

// relayThenSplice relays a splice-eligible connection here until it has
// moved SpliceAfterBytes (both ways together) or lived SpliceAfterTime,
// then hands it to the kernel. A connection that ends first (a request and
// its answer) never pays for the hand-off's syscalls and map updates; a
// long or long-lived one moves the rest of its bytes in the kernel.
//
// The trigger sets a read deadline in the past on both sockets, and a
// short write deadline. Each direction then stops at its next read with
// everything it read already written, so no byte is held in this process
// and the sockets' queues hold all that is in flight when the kernel takes
// them. A write that cannot finish in time (its peer waits on the
// direction that stopped) calls the attempt off: both directions resume
// here, and the next attempt comes after as many bytes or as long again.
//
// It reports true when the kernel took the connection (finish then runs
// at its end), false when the connection was relayed here to its end or
// closed: a direction ended first, or the splicer declined.
func (s *Server) relayThenSplice(c *relayConn, idle time.Duration, finish func()) bool {
	after, wait := s.opts.SpliceAfterBytes, s.opts.SpliceAfterTime
	c.setDatapath(DatapathRelayCopy, deferredWhy(after, wait))
	if idle > 0 {
		c.startIdle(idle)
	}
	dirs := [2]deferredDir{{src: &c.down, dst: &c.upstream, pending: c.prefix}, {src: &c.upstream, dst: &c.down}}
	c.prefix = nil
	c.spliceAfter = after
	var timer *time.Timer
	if wait > 0 {
		timer = time.AfterFunc(wait, c.startPause)
		defer timer.Stop()
	}
	for {
		ends := [2]phaseEnd{phaseEOF, phaseEOF} // a direction that ended earlier stays so
		if !dirs[1].ended {
			c.wg.Add(1)
			go func() {
				defer c.wg.Done()
				ends[1] = c.copyPhase(&dirs[1], false)
			}()
		}
		if !dirs[0].ended {
			ends[0] = c.copyPhase(&dirs[0], true)
		}
		c.wg.Wait()

		// Both directions are stopped: nothing else reads, writes or
		// counts until the next phase.
		_ = c.down.tcp.SetDeadline(time.Time{})
		_ = c.upstream.tcp.SetDeadline(time.Time{})
		switch {
		case ends[0] == phaseFailed || ends[1] == phaseFailed || c.isClosed():
			c.close(true)
			return false
		case dirs[0].ended && dirs[1].ended:
			c.close(false)
			return false
		case ends[0] == phasePaused && ends[1] == phasePaused:
			c.spliceAfter = 0
			c.stopIdle()
			switch s.kernelSplice(c, c.upstream.tcp, idle, finish) {
			case spliceHanded:
				return true
			case spliceFailed:
				return false
			}
			c.relay(idle) // declined: the rest goes through here too
			return false
		}
		// A direction ended (the other finishes here; a half-closed pair
		// is about to end) or a write stalled (try again later).
		if dirs[0].ended || dirs[1].ended {
			c.setDatapath(DatapathRelayCopy, "ended before the kernel hand-off")
		} else {
			if after > 0 {
				c.spliceAfter = c.moved.Load() + after
			}
			if timer != nil {
				timer.Reset(wait)
			}
			if ce := s.log.Check(zap.DebugLevel, "kernel hand-off put off: a write outlasted the pause"); ce != nil {
				ce.Write(zap.Stringer("client", c.clientAddr), zap.Stringer("mapping", c.bs.backend.Mapping),
					zap.Int64("moved", c.moved.Load()), zap.Int64("next_at", c.spliceAfter))
			}
		}
		c.pausing.Store(false)
	}
}

// copyPhase copies d's source to its destination through a buffer, first
// writing what is pending, until the pause for the hand-off stops it, the
// source ends (passed on as a half-close) or something fails (both sides
// closed with reset, as pump does).
func (c *relayConn) copyPhase(d *deferredDir, toUpstream bool) phaseEnd {
	write := func(b []byte) error {
		c.touch()
		n, err := d.dst.conn.Write(b)
		c.count(toUpstream, int64(n))
		c.touch()
		if c.pausedBy(err) {
			d.pending = append([]byte(nil), b[n:]...)
			return err
		}
		d.pending = nil
		if err == nil {
			c.noteMoved(int64(n))
		}
		return err
	}
	fail := func(err error) phaseEnd {
		if c.pausedBy(err) {
			return phaseStalled
		}
		c.close(true)
		return phaseFailed
	}
	if len(d.pending) > 0 {
		if err := write(d.pending); err != nil {
			return fail(err)
		}
	}
	rc, err := d.src.tcp.SyscallConn()
	if err != nil {
		c.close(true)
		return phaseFailed
	}
	for {
		// Wait for bytes before taking a buffer: a quiet connection then
		// holds none, and a burst of them does not pin 64 KiB each.
		rerr := waitReadable(rc)
		if rerr == nil {
			bp := bufPool.Get().(*[]byte)
			var nr int
			var werr error
			if nr, rerr = d.src.conn.Read(*bp); nr > 0 {
				werr = write((*bp)[:nr])
			}
			bufPool.Put(bp)
			if werr != nil {
				return fail(werr)
			}
		}
		switch {
		case rerr == nil:
		case rerr == io.EOF:
			d.ended = true
			c.ended.Store(true)
			closeWrite(d.dst)
			return phaseEOF
		case c.pausedBy(rerr):
			return phasePaused
		default:
			c.close(true)
			return phaseFailed
		}
	}
}

// pausedBy reports whether err is the pause for the hand-off: a deadline
// that startPause set.
func (c *relayConn) pausedBy(err error) bool {
	return errors.Is(err, os.ErrDeadlineExceeded) && c.pausing.Load()
}

// noteMoved adds n to the bytes moved and, on crossing spliceAfter,
// starts the pause for the hand-off.
func (c *relayConn) noteMoved(n int64) {
	if c.moved.Add(n) >= c.spliceAfter && c.spliceAfter > 0 {
		c.startPause()
	}
}

// startPause stops both directions at their next read, unless one has
// ended or the pause has begun already. The time trigger calls it from a
// timer: an idle connection is handed over too, and stops holding two
// goroutines.
func (c *relayConn) startPause() {
	if c.ended.Load() || !c.pausing.CompareAndSwap(false, true) {
		return
	}
	wd := time.Now().Add(pauseWriteTimeout)
	for _, tc := range []*net.TCPConn{c.down.tcp, c.upstream.tcp} {
		_ = tc.SetReadDeadline(pastDeadline)
		_ = tc.SetWriteDeadline(wd)
	}
}

// waitReadable waits until a read on rc would not block (bytes, end of
// stream or an error), or its read deadline passes.
func waitReadable(rc syscall.RawConn) error {
	var probe [1]byte
	var perr error
	err := rc.Read(func(fd uintptr) bool {
		_, _, perr = unix.Recvfrom(int(fd), probe[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		return perr != unix.EAGAIN
	})
	return err
}

// deferredWhy says, for Conns, when the connection goes to the kernel.
func deferredWhy(after int64, wait time.Duration) string {
	switch {
	case after > 0 && wait > 0:
		return fmt.Sprintf("here for the first %d bytes or %v, then the kernel", after, wait)
	case after > 0:
		return fmt.Sprintf("here for the first %d bytes, then the kernel", after)
	default:
		return fmt.Sprintf("here for the first %v, then the kernel", wait)
	}
}

// stopIdle stops the userspace idle timer before the kernel, which keeps
// its own, takes over.
func (c *relayConn) stopIdle() {
	c.mu.Lock()
	if c.idleTimer != nil {
		c.idleTimer.Stop()
		c.idleTimer = nil
	}
	c.mu.Unlock()
}
