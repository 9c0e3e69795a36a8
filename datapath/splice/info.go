package splice

import (
	"net"
	"sort"
	"time"

	"github.com/tcpmap/tcpmap/datapath"
)

// Mechanism names how a direction moves its bytes right now; the values
// are stable (tcpmapctl conns shows them).
const (
	MechanismSockmap       = "sockmap"        // redirected in the kernel
	MechanismUserspacePass = "userspace-pass" // the verdict passes, userspace copies
)

// DirInfo describes one direction of a spliced pair.
type DirInfo struct {
	Mechanism string // MechanismSockmap or MechanismUserspacePass
	// Why explains the mechanism: for pass mode, the reason the verdict
	// stopped redirecting; for sockmap after pass episodes, that it
	// resumed.
	Why string
	Traffic
	PassEpisodes uint32 // times this direction went to userspace
	Resumes      uint32 // times it came back to the kernel
	MaxGap       uint64 // largest redirected-but-unsent backlog seen, bytes
	Closed       bool   // FIN passed on
}

// ConnInfo describes one spliced pair.
type ConnInfo struct {
	ClientCookie, UpstreamCookie uint64
	Client, Upstream             net.Addr // remote addresses
	Mapping                      string
	ClientToUpstream             DirInfo
	UpstreamToClient             DirInfo
	Age                          time.Duration
	// Idle is how long ago the last byte moved in either direction.
	Idle time.Duration
}

// Conns describes every spliced pair, oldest first, with its counters as
// the verdict keeps them.
func (e *Engine) Conns() []ConnInfo {
	e.mu.Lock()
	all := make([]*conn, 0, len(e.conns))
	for c := range e.conns {
		all = append(all, c)
	}
	e.mu.Unlock()
	now := datapath.MonotonicNow()
	out := make([]ConnInfo, 0, len(all))
	for _, c := range all {
		ci := ConnInfo{
			ClientCookie: c.cookie[client], UpstreamCookie: c.cookie[upstream],
			Client: c.tcp[client].RemoteAddr(), Upstream: c.tcp[upstream].RemoteAddr(),
			Mapping: c.mapping,
		}
		if c.startNs != 0 {
			ci.Age = time.Duration(now - c.startNs)
		}
		last := c.startNs
		c.mu.Lock()
		shut := [2]bool{c.dir[client].shut, c.dir[upstream].shut}
		c.mu.Unlock()
		for d := range 2 {
			st, err := e.obj.Dir(c.cookie[d])
			if err != nil {
				continue // closed meanwhile
			}
			if st.LastActiveNs > last {
				last = st.LastActiveNs
			}
			di := DirInfo{
				Mechanism:    MechanismSockmap,
				Traffic:      traffic(st),
				PassEpisodes: st.PassGen,
				Resumes:      st.Resumes,
				MaxGap:       st.MaxGap,
				Closed:       shut[d],
			}
			switch {
			case st.Mode == datapath.ModePass:
				di.Mechanism = MechanismUserspacePass
				di.Why = st.PassReason.String()
			case st.PassGen > 0:
				di.Why = "back in the kernel after " + st.PassReason.String()
			}
			if d == client {
				ci.ClientToUpstream = di
			} else {
				ci.UpstreamToClient = di
			}
		}
		if last != 0 && now > last {
			ci.Idle = time.Duration(now - last)
		}
		out = append(out, ci)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Age > out[j].Age })
	return out
}
