package splice

import (
	"container/heap"
	"time"

	"github.com/tcpmap/tcpmap/datapath"
)

// Idle timeouts: pairs with an IdleTimeout sit in a heap ordered by the
// time they are next due for a check, and one timer fires at the earliest.
// A check reads both directions' last activity from the verdict's counters
// (no userspace activity tracking is needed: the verdict stamps every skb,
// passed or redirected) and either closes the pair or pushes it back to
// last activity + timeout. Each pair costs two map lookups per timeout
// period, however many pairs there are.

type idleHeap []*conn

func (h idleHeap) Len() int           { return len(h) }
func (h idleHeap) Less(i, j int) bool { return h[i].due < h[j].due }
func (h idleHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIdx = i
	h[j].heapIdx = j
}
func (h *idleHeap) Push(x any) {
	c := x.(*conn)
	c.heapIdx = len(*h)
	*h = append(*h, c)
}
func (h *idleHeap) Pop() any {
	old := *h
	c := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	c.heapIdx = -1
	return c
}

// watchIdle schedules the first idle check of a pair.
func (e *Engine) watchIdle(c *conn) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.conns[c]; !ok {
		return
	}
	c.due = c.startNs + uint64(c.idle)
	heap.Push(&e.idle, c)
	e.armIdle()
}

// unwatchIdle removes a pair from the heap. Called with e.mu held.
func (e *Engine) unwatchIdle(c *conn) {
	if c.heapIdx >= 0 {
		heap.Remove(&e.idle, c.heapIdx)
	}
}

// armIdle sets the timer to the earliest due check. Called with e.mu held.
func (e *Engine) armIdle() {
	if len(e.idle) == 0 || e.stopping.Load() {
		e.idleT.Stop()
		return
	}
	now := datapath.MonotonicNow()
	wait := time.Duration(0)
	if due := e.idle[0].due; due > now {
		wait = time.Duration(due - now)
	}
	e.idleT.Reset(wait)
}

// scanIdle runs the due checks.
func (e *Engine) scanIdle() {
	var expired []*conn
	e.mu.Lock()
	now := datapath.MonotonicNow()
	for len(e.idle) > 0 && e.idle[0].due <= now {
		c := heap.Pop(&e.idle).(*conn)
		last := c.startNs
		for d := range 2 {
			if st, err := e.obj.Dir(c.cookie[d]); err == nil && st.LastActiveNs > last {
				last = st.LastActiveNs
			}
		}
		if now-last >= uint64(c.idle) {
			expired = append(expired, c)
			continue
		}
		c.due = last + uint64(c.idle)
		heap.Push(&e.idle, c)
	}
	e.armIdle()
	e.mu.Unlock()
	for _, c := range expired {
		c.finish(IdleTimeout, -1)
	}
}
