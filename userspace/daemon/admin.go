package daemon

import (
	"strings"
	"time"

	"github.com/tcpmap/tcpmap/userspace/api"
	"github.com/tcpmap/tcpmap/userspace/config"
	"github.com/tcpmap/tcpmap/userspace/manager"
	"github.com/tcpmap/tcpmap/userspace/relay"
)

// kernelView is what the admin API shows of the kernel datapath.
type kernelView interface {
	BPFStatus() *api.BPFStatus
	Pairs() int
	// DescribeAll returns the kernel's view of the spliced connections
	// with these handles; ended ones are missing.
	DescribeAll(handles []relay.SplicedConn) map[relay.SplicedConn]*api.KernelConn
	// Tables reads the pinned listener tables by listener key and by
	// mapping name.
	Tables() (map[string]*api.ListenerBPF, map[string]*api.MappingBPF)
}

// admin answers the admin API from the manager and, when it runs, the
// kernel datapath.
type admin struct {
	m        *manager.Manager
	datapath string
	reason   string
	kernel   kernelView // nil in userspace mode
}

var _ api.Backend = (*admin)(nil)

func (a *admin) Status() api.Status {
	s := api.Status{Datapath: a.datapath, DatapathReason: a.reason, Listeners: []api.Listener{}, Problems: []api.Problem{}}
	var bpfListeners map[string]*api.ListenerBPF
	var bpfMappings map[string]*api.MappingBPF
	if a.kernel != nil {
		s.BPF = a.kernel.BPFStatus()
		s.Kernel = &api.KernelStat{Pairs: a.kernel.Pairs()}
		bpfListeners, bpfMappings = a.kernel.Tables()
	}
	for _, ls := range a.m.Stats() {
		l := api.Listener{
			Key:      ls.Spec.Key(),
			Protocol: string(ls.Spec.Protocol),
			Proxy:    ls.Spec.ProxyProtocol,
			Active:   ls.Stats.Listener.Active,
			Accepted: ls.Stats.Listener.Accepted,
			Refusals: nonZero(ls.Stats.Listener.ByReason()),
			Mappings: []api.Mapping{},
			BPF:      bpfListeners[ls.Spec.Key()],
		}
		for _, r := range ls.Spec.Routes {
			for _, b := range r.Backends {
				ms := ls.Stats.Mappings[b.Mapping]
				l.Mappings = append(l.Mappings, api.Mapping{
					Name:                  b.Mapping.NamespacedName(),
					Active:                ms.Active,
					Total:                 ms.Total,
					Spliced:               ms.Spliced,
					BytesToUpstream:       ms.BytesToUpstream,
					BytesToClient:         ms.BytesToClient,
					KernelBytesToUpstream: ms.KernelBytesToUpstream,
					KernelBytesToClient:   ms.KernelBytesToClient,
					Refusals:              nonZero(ms.Refusals.ByReason()),
					IdleClosed:            ms.IdleClosed,
					BPF:                   bpfMappings[b.Mapping.NamespacedName()],
				})
			}
		}
		s.Listeners = append(s.Listeners, l)
	}
	for _, p := range a.m.Problems() {
		s.Problems = append(s.Problems, apiProblem(p))
	}
	s.Resources = []api.Resource{}
	for _, o := range a.m.Outcomes() {
		s.Resources = append(s.Resources, api.Resource{
			Kind: o.Ref.Kind, Namespace: o.Ref.Namespace, Name: o.Ref.Name, Source: api.SourceOf(o.Origin),
			Outcome: o.State, Errors: o.Errors, Warnings: o.Warnings,
		})
	}
	return s
}

func (a *admin) Conns(mapping string) []api.Conn {
	now := time.Now()
	conns := a.m.Conns()
	var kernelConns map[relay.SplicedConn]*api.KernelConn
	if a.kernel != nil {
		var handles []relay.SplicedConn
		for _, c := range conns {
			if c.Spliced != nil {
				handles = append(handles, c.Spliced)
			}
		}
		kernelConns = a.kernel.DescribeAll(handles)
	}
	var out []api.Conn
	for _, c := range conns {
		name := c.Mapping.NamespacedName()
		if mapping != "" && mapping != name && (strings.Contains(mapping, "/") || mapping != c.Mapping.Name) {
			continue
		}
		ac := api.Conn{
			Listener:        c.Listener,
			Mapping:         name,
			Datapath:        c.Datapath,
			Why:             c.Why,
			Age:             now.Sub(c.Started),
			BytesToUpstream: c.BytesToUpstream,
			BytesToClient:   c.BytesToClient,
		}
		if c.Mapping.Name == "" {
			ac.Mapping = ""
		}
		if c.Client != nil {
			ac.Client = c.Client.String()
		}
		if c.Spliced != nil {
			if k := kernelConns[c.Spliced]; k != nil {
				ac.Kernel = k
				ac.BytesToUpstream += int64(k.ToUpstream.Bytes)
				ac.BytesToClient += int64(k.ToClient.Bytes)
			}
		}
		out = append(out, ac)
	}
	return out
}

func nonZero(m map[string]uint64) map[string]uint64 {
	out := make(map[string]uint64)
	for k, v := range m {
		if v > 0 {
			out[k] = v
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

func apiProblem(p config.Problem) api.Problem { return api.ProblemOf(p) }
