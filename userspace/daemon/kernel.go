package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/tcpmap/tcpmap/datapath"
	"github.com/tcpmap/tcpmap/datapath/splice"
	"github.com/tcpmap/tcpmap/datapath/steer"
	"github.com/tcpmap/tcpmap/userspace/api"
	"github.com/tcpmap/tcpmap/userspace/manager"
	"github.com/tcpmap/tcpmap/userspace/relay"
	"github.com/tcpmap/tcpmap/userspace/snapshot"
)

// kernel adapts the splice engine to what the relay (relay.Splicer) and
// the admin API (kernelView) expect of the kernel datapath.
type kernel struct {
	e *splice.Engine
	// steer serves every listener from one socket per family; nil when
	// sk_lookup is unavailable or turned off.
	steer *steer.Steerer
	// steerWhy says why steer is nil.
	steerWhy string
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
		Mapping:     info.Mapping.NamespacedName(),
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
	s := &api.BPFStatus{PinDir: st.PinDir, AttachMode: string(st.Attach), Maps: []string{}, Programs: []string{},
		Steering: "sk_lookup"}
	if k.steer == nil {
		s.Steering, s.SteeringReason = "per-port sockets", k.steerWhy
	}
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

// listen opens a listener through the sk_lookup steering when it runs,
// else (or for a family without a shared socket) binds a socket of its
// own.
func (k *kernel) listen(spec snapshot.Listener) (net.Listener, error) {
	if k.steer != nil {
		ln, err := k.steer.Listen(spec.Key(), spec.Address, spec.Port)
		if err == nil {
			return ln, nil
		}
		if !errors.Is(err, steer.ErrNoSocket) {
			return nil, err
		}
	}
	return manager.BindListener(spec)
}

// Sync mirrors the applied snapshot into the listeners and mappings maps.
func (k *kernel) Sync(snap snapshot.Snapshot) error {
	return k.e.Datapath().SyncTables(listenerTables(snap))
}

// listenerTables turns a snapshot into the datapath's table rows. Mapping
// names are "namespace/name", the labels the splice engine counts under,
// so that both share one id.
func listenerTables(snap snapshot.Snapshot) []datapath.ListenerTable {
	var out []datapath.ListenerTable
	for _, l := range snap.Listeners {
		t := datapath.ListenerTable{Name: l.Key(), TLS: l.Protocol == snapshot.ProtocolTLS, Proxy: l.ProxyProtocol}
		if l.Address == "" {
			t.Endpoints = []datapath.Endpoint{
				{Addr: netip.IPv4Unspecified(), Port: uint16(l.Port)},
				{Addr: netip.IPv6Unspecified(), Port: uint16(l.Port)},
			}
		} else if a, err := netip.ParseAddr(l.Address); err == nil {
			t.Endpoints = []datapath.Endpoint{{Addr: a.Unmap(), Port: uint16(l.Port)}}
		}
		for _, r := range l.Routes {
			for i := range r.Backends {
				b := &r.Backends[i]
				var flags datapath.MappingFlags
				if l.SpliceEligible(b) {
					flags |= datapath.MappingSplice
				}
				if r.Termination != nil {
					flags |= datapath.MappingTLSTerminate
				}
				if b.Origination != nil {
					flags |= datapath.MappingTLSOriginate
				}
				if b.SendProxyProtocol != 0 {
					flags |= datapath.MappingProxyOut
				}
				t.Mappings = append(t.Mappings, datapath.MappingTable{
					Name: b.Mapping.NamespacedName(), Host: r.Host, Upstream: b.Upstream.Service,
					Weight: uint32(b.Weight), Flags: flags, IdleTimeout: r.IdleTimeout,
				})
			}
		}
		out = append(out, t)
	}
	return out
}

// Tables reads the kernel's listener tables and counters for the admin
// API, keyed by listener key and by mapping name.
func (k *kernel) Tables() (map[string]*api.ListenerBPF, map[string]*api.MappingBPF) {
	obj := k.e.Datapath()
	listeners := map[string]*api.ListenerBPF{}
	mappings := map[string]*api.MappingBPF{}
	dump, err := obj.Listeners()
	if err != nil {
		return listeners, mappings
	}
	stats, _ := obj.ListenerStats()
	for _, d := range dump {
		name := obj.ListenerName(d.ID)
		lb := listeners[name]
		if lb == nil {
			lb = &api.ListenerBPF{ID: d.ID, Steered: d.Steered, Endpoints: []string{},
				SteeredConnections: stats[d.ID].Steered}
			listeners[name] = lb
		}
		lb.Steered = lb.Steered && d.Steered
		lb.Endpoints = append(lb.Endpoints, netip.AddrPortFrom(d.Endpoint.Addr, d.Endpoint.Port).String())
	}
	ms, err := obj.Mappings()
	if err != nil {
		return listeners, mappings
	}
	totals, _ := obj.MappingTotals()
	for id, m := range ms {
		t := totals[id]
		mappings[m.Name] = &api.MappingBPF{ID: id, ListenerID: m.ListenerID, Weight: m.Weight, Upstream: m.Upstream,
			Flags: mappingFlagNames(m.Flags), Bytes: t.Bytes, Packets: t.Packets, PassedBytes: t.PassedBytes}
	}
	return listeners, mappings
}

func mappingFlagNames(f datapath.MappingFlags) []string {
	out := []string{}
	for _, n := range []struct {
		f    datapath.MappingFlags
		name string
	}{{datapath.MappingSplice, "splice"}, {datapath.MappingTLSTerminate, "tls-terminate"},
		{datapath.MappingTLSOriginate, "tls-originate"}, {datapath.MappingProxyOut, "proxy-out"}} {
		if f&n.f != 0 {
			out = append(out, n.name)
		}
	}
	return out
}
