package splice

import (
	"errors"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// pollLoop is the engine's one epoll goroutine. Every spliced socket is
// registered edge-triggered for EPOLLRDHUP (EPOLLHUP and EPOLLERR are
// implied) on a private epoll instance, not Go's netpoller: the kernel
// signals a spliced socket readable after every skb it redirects, and an
// interest set without EPOLLIN filters those wake-ups out in the kernel,
// so this goroutine wakes only when a connection ends. Events carry the
// socket cookie, which is never reused, so an event for a socket closed
// meanwhile finds nothing instead of a new socket with the same fd.
func (e *Engine) pollLoop() {
	defer e.wg.Done()
	evs := make([]unix.EpollEvent, 64)
	for {
		n, err := unix.EpollWait(e.epfd, evs, -1)
		if e.stopping.Load() {
			return
		}
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			e.log.Error("epoll_wait failed; spliced connections will no longer see their end", zap.Error(err))
			return
		}
		for _, ev := range evs[:n] {
			tok := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			if tok == 0 {
				continue // wake-up for stopping, checked above
			}
			c, side := e.lookup(tok)
			if c == nil {
				continue
			}
			c.onEnd(side, ev.Events)
		}
	}
}

// eventLoop reads the verdict's ring buffer: a direction entered pass
// mode, so its bytes now wait on its source socket for userspace.
func (e *Engine) eventLoop() {
	defer e.wg.Done()
	for {
		ev, err := e.events.Read()
		if err != nil {
			if !e.stopping.Load() {
				e.log.Error("reading pass events failed", zap.Error(err))
			}
			return
		}
		c, side := e.lookup(ev.Cookie)
		if c == nil {
			continue
		}
		c.startPass(side)
	}
}
