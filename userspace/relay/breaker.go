package relay

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/tcpmap/tcpmap/userspace/snapshot"
)

// tripLogInterval is the shortest gap between two "circuit breaker
// tripped" lines of one route; trips in between are summed into the next
// line (and always counted in the stats).
const tripLogInterval = time.Second

// limits is the effective circuit breaker of a route: the snapshot's
// values with zero (not set, as in hand-built snapshots) meaning Envoy's
// defaults.
type limits struct {
	maxConnections, maxPending int
	priority                   string
}

func effectiveLimits(cb snapshot.CircuitBreaker) limits {
	l := limits{maxConnections: cb.MaxConnections, maxPending: cb.MaxPendingRequests, priority: cb.Priority}
	if l.maxConnections <= 0 {
		l.maxConnections = snapshot.DefaultMaxConnections
	}
	if l.maxPending <= 0 {
		l.maxPending = snapshot.DefaultMaxPendingRequests
	}
	return l
}

// breaker counts one route's upstream connections against its circuit
// breaker limits. One breaker exists per route host on a listener and
// carries over Update while the host stays, so connections admitted before
// an Update still count against the limits after it, and release into the
// same counts when they end.
//
// max_connections bounds active plus pending connections: a dial in
// progress holds a connection slot, as in Envoy (whose connection pool
// counts a connection from the moment it starts connecting), so that
// concurrent dials can never overshoot the limit. A failed dial gives its
// slot back. max_pending_requests bounds dials in progress alone.
//
// priority is recorded and reported but changes nothing: Envoy keeps a
// separate set of thresholds (and counts) for high-priority traffic, and
// a TCPMapping names one priority for all its connections, so a route's
// single set of limits is the one for its priority.
type breaker struct {
	mu      sync.Mutex
	active  int // upstream connected, until the connection closes
	pending int // upstream dial in progress

	tripsMaxConn, tripsPending atomic.Uint64

	// logMu guards the log rate limit.
	logMu    sync.Mutex
	lastLog  time.Time
	unlogged int
}

// admit reserves a pending slot for a new connection, or names the limit
// that refuses it.
func (b *breaker) admit(l limits) (refusal, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.active+b.pending >= l.maxConnections {
		b.tripsMaxConn.Add(1)
		return refuseMaxConnections, false
	}
	if b.pending >= l.maxPending {
		b.tripsPending.Add(1)
		return refuseMaxPending, false
	}
	b.pending++
	return "", true
}

// dialed turns an admitted connection's pending slot into an active one,
// or frees it when the dial failed.
func (b *breaker) dialed(ok bool) {
	b.mu.Lock()
	b.pending--
	if ok {
		b.active++
	}
	b.mu.Unlock()
}

// release frees the active slot of a connection that was dialed.
func (b *breaker) release() {
	b.mu.Lock()
	b.active--
	b.mu.Unlock()
}

func (b *breaker) counts() (active, pending int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.active, b.pending
}

// logTrip records a trip at now and reports whether to log a line, with
// the number of trips it stands for (this one and those suppressed since
// the last line).
func (b *breaker) logTrip(now time.Time) (trips int, log bool) {
	b.logMu.Lock()
	defer b.logMu.Unlock()
	b.unlogged++
	if !b.lastLog.IsZero() && now.Sub(b.lastLog) < tripLogInterval {
		return 0, false
	}
	trips, b.unlogged, b.lastLog = b.unlogged, 0, now
	return trips, true
}
