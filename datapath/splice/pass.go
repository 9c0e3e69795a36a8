package splice

import (
	"errors"
	"net"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/tcpmap/tcpmap/datapath"
)

// passBufSize is the copy buffer of a direction in pass mode. Buffers are
// pooled: an idle or kernel-spliced pair holds none.
const passBufSize = 1 << 20

var passBufs = sync.Pool{New: func() any {
	b := make([]byte, passBufSize)
	return &b
}}

// startPass starts the pass goroutine of direction d unless one runs.
func (c *conn) startPass(d int) {
	c.mu.Lock()
	if !c.ready {
		c.passReq[d] = true
		c.mu.Unlock()
		return
	}
	if c.done || c.dir[d].passing {
		c.mu.Unlock()
		return
	}
	c.dir[d].passing = true
	c.e.wg.Add(1)
	c.mu.Unlock()
	go c.runPass(d)
}

// runPass copies what the verdict passed on direction d's source socket to
// its destination, in order, then hands the direction back to the kernel.
//
// The verdict passes (leaves on the source socket, where it is charged to
// the receive buffer and closes the TCP window) every byte after the first
// one it would not redirect, so the passed bytes follow the redirected ones
// in the stream. Userspace therefore:
//  1. waits until every redirected byte entered the destination's write
//     queue (gap 0) before its first write, so its bytes cannot overtake
//     them;
//  2. reads only as many bytes as the verdict passed (Dir.Passed), never
//     bytes the verdict has not seen, and writes each chunk completely,
//     blocking on the destination's write space: that stall is what keeps
//     the source's window closed, i.e. the back-pressure;
//  3. counts what it wrote (published in Ctl.UserWritten with the resume
//     request: the verdict only compares it when asked to resume);
//  4. once caught up and the destination has room, holds the source
//     (SO_RCVLOWAT, so no new skb reaches the verdict), checks it is still
//     caught up, sets Ctl.ResumeGen to the episode and releases the hold.
//     The verdict resumes redirecting at the next skb only if by then
//     Passed == UserWritten; otherwise it keeps passing and the loop goes
//     on. Without the hold a steady sender never lets userspace be exactly
//     caught up when an skb arrives, and the direction would stay in
//     userspace for good (as the prototype saw).
func (c *conn) runPass(d int) {
	defer c.e.wg.Done()
	src, dst := d, 1-d
	ds := &c.dir[d]
	bp := passBufs.Get().(*[]byte)
	defer passBufs.Put(bp)
	buf := *bp
	var empty backoff
	for {
		st, err := c.e.obj.Dir(c.cookie[src])
		if err != nil {
			c.passEnd(d)
			return
		}
		if pending := st.Passed - ds.userRead; pending > 0 {
			if st.Redirected != ds.gapChecked {
				if err := c.waitGap(d, st.Redirected); err != nil {
					c.passFailed(d, dst, err)
					return
				}
				ds.gapChecked = st.Redirected
			}
			// Read only what the psock's ingress queue holds (SIOCINQ
			// reports it on a socket in a sockmap): with that queue empty
			// a read falls through to the TCP receive queue, whose bytes
			// the verdict has not seen yet and which may be newer than
			// passed bytes still on their way to the ingress queue;
			// reading them would reorder the stream.
			inq, err := c.psockQueued(src)
			if err != nil {
				c.passFailed(d, src, err)
				return
			}
			if inq == 0 {
				empty.wait()
				continue
			}
			n, err := c.readSome(src, buf[:min(uint64(len(buf)), pending, uint64(inq))])
			if err != nil {
				c.passFailed(d, src, err)
				return
			}
			if n == 0 {
				// End of stream reported while passed bytes still sit on
				// the socket's psock queue: they come shortly.
				empty.wait()
				continue
			}
			empty.reset()
			ds.userRead += uint64(n)
			if err := c.writeAll(dst, buf[:n]); err != nil {
				c.passFailed(d, dst, err)
				return
			}
			ds.userWritten.Add(uint64(n))
			c.e.userBytes.Add(uint64(n))
			c.tryFin(d) // no-op unless the source already sent FIN
			continue
		}
		if st.Mode == datapath.ModeRedirect || ds.resumeGen == st.PassGen {
			if c.passExit(d) {
				return
			}
			continue
		}
		// Caught up. Hand back only when the destination has room, or
		// the verdict would fill the gap again at once; meanwhile the
		// source's window stays closed.
		if err := c.waitWritable(dst); err != nil {
			c.passFailed(d, dst, err)
			return
		}
		if !c.e.opts.Resume {
			// A direction that congested stays in userspace for the
			// rest of the connection: see Options.Resume.
			empty.wait()
			continue
		}
		if err := c.resume(d); err != nil {
			c.passFailed(d, src, err)
			return
		}
	}
}

// resume asks the verdict to redirect again (step 4 of runPass).
func (c *conn) resume(d int) error {
	ds := &c.dir[d]
	if err := c.ctrl(d, func(fd int) error { return setRcvlowat(fd, holdLowat) }); err != nil {
		return err
	}
	st, err := c.e.obj.Dir(c.cookie[d])
	if err == nil && st.Mode == datapath.ModePass && st.Passed == ds.userRead {
		ds.resumeGen = st.PassGen
		uw := ds.userWritten.Load()
		if err = c.e.obj.SetCtl(c.cookie[d], datapath.Ctl{UserWritten: uw, ResumeGen: ds.resumeGen}); err == nil {
			ds.published = uw
		}
	}
	return errors.Join(err, c.ctrl(d, func(fd int) error { return setRcvlowat(fd, 1) }))
}

// passExit ends the goroutine if the direction is back in the kernel or
// will be at its next skb. The check runs under the pair's lock, which
// startPass takes too, so an episode that began meanwhile is either seen
// here or starts a new goroutine.
func (c *conn) passExit(d int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	ds := &c.dir[d]
	st, err := c.e.obj.Dir(c.cookie[d])
	if err != nil || c.done {
		ds.passing = false
		return true
	}
	if st.Passed != ds.userRead || (st.Mode == datapath.ModePass && st.PassGen != ds.resumeGen) {
		return false
	}
	if st.Mode == datapath.ModePass {
		// The resume request must carry the final count, or the verdict
		// keeps passing (Passed != UserWritten) with nobody reading.
		uw := ds.userWritten.Load()
		if ds.published != uw {
			err := c.e.obj.SetCtl(c.cookie[d], datapath.Ctl{UserWritten: uw, ResumeGen: ds.resumeGen})
			if err != nil {
				ds.passing = false
				return true // entries gone: the pair is closing
			}
			ds.published = uw
			// The verdict may have passed more before it saw the update.
			if st, err = c.e.obj.Dir(c.cookie[d]); err == nil && st.Mode == datapath.ModePass && st.Passed != ds.userRead {
				return false
			}
		}
	}
	ds.passing = false
	return true
}

func (c *conn) passEnd(d int) {
	c.mu.Lock()
	c.dir[d].passing = false
	c.mu.Unlock()
}

// passFailed ends the pass goroutine after an error on side: a closed
// connection (the pair is finishing) ends quietly, any other error resets
// the pair.
func (c *conn) passFailed(d, side int, err error) {
	c.passEnd(d)
	if errors.Is(err, net.ErrClosed) {
		return
	}
	reason := ClientReset
	if side == upstream {
		reason = UpstreamReset
	}
	// A peer's reset is an ordinary end; anything else means the engine
	// or the kernel misbehaved, and the log must name the call and errno.
	logf := c.log().Warn
	if errors.Is(err, unix.ECONNRESET) || errors.Is(err, unix.EPIPE) {
		logf = c.log().Debug
	}
	logf("pass-mode copy failed; connection reset", zap.String("side", sideNames[side]), zap.Error(err))
	c.finish(reason, side)
}

// psockQueued is the number of bytes waiting on side's psock ingress queue.
func (c *conn) psockQueued(side int) (int, error) {
	var inq int
	err := c.ctrl(side, func(fd int) error {
		var err error
		inq, err = unix.IoctlGetInt(fd, unix.SIOCINQ)
		return err
	})
	return inq, err
}

// readSome reads up to len(b) bytes, waiting on Go's netpoller while the
// socket has nothing. 0 means end of stream.
func (c *conn) readSome(side int, b []byte) (int, error) {
	var n int
	var rerr error
	err := c.raw[side].Read(func(fd uintptr) bool {
		for {
			n, rerr = unix.Read(int(fd), b)
			if rerr != unix.EINTR {
				break
			}
		}
		return rerr != unix.EAGAIN
	})
	if err != nil {
		return 0, err
	}
	if rerr != nil {
		return 0, rerr
	}
	return max(n, 0), nil
}

// writeAll writes b completely, waiting on Go's netpoller while the
// socket's send buffer is full.
func (c *conn) writeAll(side int, b []byte) error {
	var werr error
	err := c.raw[side].Write(func(fd uintptr) bool {
		for len(b) > 0 {
			n, err := unix.Write(int(fd), b)
			if n > 0 {
				b = b[n:]
			}
			switch {
			case err == nil, err == unix.EINTR:
			case err == unix.EAGAIN:
				return false
			default:
				werr = err
				return true
			}
		}
		return true
	})
	if err != nil {
		return err
	}
	return werr
}

// waitWritable waits until the kernel considers the socket writable.
func (c *conn) waitWritable(side int) error {
	return c.raw[side].Write(func(fd uintptr) bool { return writable(int(fd)) })
}

// waitGap waits until every byte direction d redirected (and wrote)
// entered the destination's write queue. The destination's psock worker
// drains the gap, retrying once per jiffy when the send buffer is full,
// so this sleeps with a backoff instead of spinning.
func (c *conn) waitGap(d int, redirected uint64) error {
	ds := &c.dir[d]
	var bo backoff
	for {
		var in uint64
		err := c.ctrl(1-d, func(fd int) error {
			ti, err := tcpInfo(fd)
			if err == nil {
				in = entered(ti)
			}
			return err
		})
		if err != nil {
			return err
		}
		if in-ds.dstBase >= redirected+ds.userWritten.Load() {
			return nil
		}
		bo.wait()
	}
}

// backoff sleeps 50µs, doubling up to 5ms.
type backoff struct{ d time.Duration }

func (b *backoff) wait() {
	if b.d == 0 {
		b.d = 50 * time.Microsecond
	} else if b.d < 5*time.Millisecond {
		b.d *= 2
	}
	time.Sleep(b.d)
}

func (b *backoff) reset() { b.d = 0 }
