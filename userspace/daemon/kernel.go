package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/tcpmap/tcpmap/datapath/splice"
	"github.com/tcpmap/tcpmap/userspace/api"
	"github.com/tcpmap/tcpmap/userspace/relay"
)

// kernel adapts the splice engine to what the relay (relay.Splicer) and
// the admin API (kernelView) expect of the kernel datapath.
type kernel struct {
	e *splice.Engine
}

var (
	_ relay.Splicer = (*kernel)(nil)
	_ kernelView    = (*kernel)(nil)
)

// splicedPair is the relay's handle on a spliced connection.
type splicedPair struct {
	clientCookie uint64
	cancel       context.CancelFunc
}

// Close aborts the pair; the engine resets both sockets and reports the
// end through done. (A clean close is the peers' to make.)
func (p *splicedPair) Close(bool) { p.cancel() }

func (k *kernel) Splice(client, up *net.TCPConn, info relay.SpliceInfo, done func(relay.SpliceResult)) (relay.SplicedConn, error) {
	cookie, err := socketCookie(client)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &splicedPair{clientCookie: cookie, cancel: cancel}
	err = k.e.Splice(splice.Pair{
		Client:      client,
		Upstream:    up,
		Mapping:     info.Mapping.String(),
		IdleTimeout: info.IdleTimeout,
		Context:     ctx,
		OnDone: func(r splice.Result) {
			cancel()
			done(relay.SpliceResult{
				BytesToUpstream:  int64(r.ClientToUpstream.Bytes),
				BytesToClient:    int64(r.UpstreamToClient.Bytes),
				PassedToUpstream: int64(r.ClientToUpstream.PassedBytes),
				PassedToClient:   int64(r.UpstreamToClient.PassedBytes),
				IdleClosed:       r.Reason == splice.IdleTimeout,
				Reset:            r.Reason != splice.Closed && r.Reason != splice.IdleTimeout,
			})
		},
	})
	if err != nil {
		cancel()
		if errors.Is(err, splice.ErrHandoffAborted) {
			return nil, fmt.Errorf("%w: %v", relay.ErrSpliceAborted, err)
		}
		return nil, err
	}
	return p, nil
}

func socketCookie(c *net.TCPConn) (uint64, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cookie uint64
	var serr error
	if err := raw.Control(func(fd uintptr) {
		cookie, serr = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_COOKIE)
	}); err != nil {
		return 0, err
	}
	return cookie, serr
}

func (k *kernel) BPFStatus() *api.BPFStatus {
	st := k.e.Stats()
	s := &api.BPFStatus{PinDir: st.PinDir, AttachMode: string(st.Attach), Maps: []string{}, Programs: []string{}}
	entries, _ := os.ReadDir(st.PinDir)
	for _, e := range entries {
		switch name := e.Name(); {
		case strings.HasPrefix(name, "prog_"):
			s.Programs = append(s.Programs, strings.TrimPrefix(name, "prog_"))
		case strings.HasPrefix(name, "link_"):
		default:
			s.Maps = append(s.Maps, name)
		}
	}
	return s
}

func (k *kernel) Pairs() int { return k.e.Stats().Pairs }

// DescribeAll returns the kernel's view of every spliced connection the
// relay holds a handle for.
func (k *kernel) DescribeAll(handles []relay.SplicedConn) map[relay.SplicedConn]*api.KernelConn {
	byCookie := make(map[uint64]splice.ConnInfo)
	for _, ci := range k.e.Conns() {
		byCookie[ci.ClientCookie] = ci
	}
	out := make(map[relay.SplicedConn]*api.KernelConn, len(handles))
	for _, h := range handles {
		p, ok := h.(*splicedPair)
		if !ok {
			continue
		}
		ci, ok := byCookie[p.clientCookie]
		if !ok {
			continue
		}
		out[h] = &api.KernelConn{
			ClientCookie:   ci.ClientCookie,
			UpstreamCookie: ci.UpstreamCookie,
			ToUpstream:     direction(ci.ClientToUpstream),
			ToClient:       direction(ci.UpstreamToClient),
		}
	}
	return out
}

func direction(d splice.DirInfo) api.Direction {
	return api.Direction{Mechanism: d.Mechanism, Why: d.Why, Bytes: d.Bytes, Packets: d.Packets}
}
