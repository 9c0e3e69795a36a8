package upstream

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"
)

// timeoutError is the cause of a Dial's own timeout. It matches
// context.DeadlineExceeded and os.ErrDeadlineExceeded with errors.Is so
// callers can test for a timeout either way.
type timeoutError struct{ after time.Duration }

func (e *timeoutError) Error() string { return "timeout after " + e.after.String() }

// Timeout makes the error a net.Error timeout.
func (e *timeoutError) Timeout() bool { return true }

// Temporary is part of net.Error.
func (e *timeoutError) Temporary() bool { return true }

func (e *timeoutError) Is(target error) bool {
	return target == context.DeadlineExceeded || target == os.ErrDeadlineExceeded
}

// contextCause is why ctx ended: our timeoutError when Dial's timeout
// fired, the parent's error (or cause) otherwise, nil while ctx is live.
func contextCause(ctx context.Context) error {
	if ctx.Err() == nil {
		// The socket's connect deadline (set from ctx's) can fire a few
		// microseconds before ctx's own timer does. Past the deadline,
		// wait for that timer (it is due) so the cause is ctx's own.
		dl, ok := ctx.Deadline()
		if !ok || time.Now().Before(dl) {
			return nil
		}
		<-ctx.Done()
	}
	return context.Cause(ctx)
}

// connectError is one failed connect. Its message keeps only the reason
// ("connection refused"), not net's "dial tcp …: connect:" chain, while
// Unwrap still reaches the errno.
type connectError struct {
	addr   netip.AddrPort
	budget time.Duration // the attempt's share of the time, 0 if unbounded
	err    error
}

func (e *connectError) Error() string {
	return "connect to " + e.addr.String() + ": " + e.reason()
}

func (e *connectError) Unwrap() error { return e.err }

func (e *connectError) reason() string {
	var ne net.Error
	if errors.As(e.err, &ne) && ne.Timeout() {
		if e.budget > 0 {
			return "timeout after " + e.budget.Round(time.Millisecond).String()
		}
		return "timeout"
	}
	var se *os.SyscallError
	if errors.As(e.err, &se) {
		return se.Err.Error()
	}
	var oe *net.OpError
	if errors.As(e.err, &oe) && oe.Err != nil {
		return oe.Err.Error()
	}
	return e.err.Error()
}

// dialError is a Dial that resolved its target but connected nowhere.
type dialError struct {
	target   string
	cause    error // why the dial's context ended, nil if it did not
	attempts []error
}

// Error reads "dial upstream T: <cause>: <attempt>; <attempt>", either part
// left out when empty.
func (e *dialError) Error() string {
	var b strings.Builder
	b.WriteString("dial upstream ")
	b.WriteString(e.target)
	b.WriteString(": ")
	if e.cause != nil {
		b.WriteString(e.cause.Error())
		if len(e.attempts) > 0 {
			b.WriteString(": ")
		}
	}
	for i, a := range e.attempts {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(a.Error())
	}
	if e.cause == nil && len(e.attempts) == 0 {
		b.WriteString("no address to connect to")
	}
	return b.String()
}

func (e *dialError) Unwrap() []error {
	errs := make([]error, 0, len(e.attempts)+1)
	if e.cause != nil {
		errs = append(errs, e.cause)
	}
	return append(errs, e.attempts...)
}

// errNoAddresses is a lookup that succeeded with an empty answer.
var errNoAddresses = errors.New("no addresses")

// lookupError keeps the reason of a failed lookup ("no such host") and
// drops the resolver's "lookup foo on 10.96.0.10:53:" prefix, which repeats
// the name; Unwrap still reaches the *net.DNSError.
type lookupError struct{ err error }

func (e *lookupError) Error() string {
	var de *net.DNSError
	if errors.As(e.err, &de) && de.Err != "" {
		return de.Err
	}
	return e.err.Error()
}

func (e *lookupError) Unwrap() error { return e.err }
