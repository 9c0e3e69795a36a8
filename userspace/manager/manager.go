// Package manager owns the desired state: it loads the configuration,
// resolves it into a snapshot and turns each new snapshot into listener
// changes, touching only what changed. Unchanged listeners, and every live
// connection on them, are never disturbed by a reload.
package manager

import (
	"context"
	"errors"
	"fmt"
	"net"
	"reflect"
	"sort"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/tcpmap/tcpmap/userspace/config"
	"github.com/tcpmap/tcpmap/userspace/relay"
	"github.com/tcpmap/tcpmap/userspace/resolve"
	"github.com/tcpmap/tcpmap/userspace/snapshot"
	"github.com/tcpmap/tcpmap/userspace/store"
)

// Options configure a Manager.
type Options struct {
	Logger *zap.Logger
	// ConfigPaths are files or directories of YAML/JSON resources.
	ConfigPaths []string
	// Resolve carries the ambassador_id and service naming options.
	Resolve resolve.Options
	// Relay is the template for every listener's relay server.
	Relay relay.Options
	// Store holds the objects applied through the admin API; nil means
	// the configuration files are the only source.
	Store *store.Store
	// NodeAddress, when set, says whether a listener address belongs to
	// this node; listeners on other addresses are reported and not
	// opened, so one configuration serves a whole cluster of nodes.
	NodeAddress func(address string) error
	// Listen opens a listener's socket; nil binds one with net.Listen.
	// The daemon passes the sk_lookup steering here, which serves every
	// port from one socket per family.
	Listen func(spec snapshot.Listener) (net.Listener, error)
	// Tables, when set, receives every applied snapshot (after node
	// filtering) to mirror into the kernel's listener tables.
	Tables interface {
		Sync(snapshot.Snapshot) error
	}
	// Sources are further providers of resources (Kubernetes), merged
	// after the files and before the store.
	Sources []Source
	// DrainTimeout bounds how long connections of a removed listener (or of
	// every listener at shutdown) may keep running.
	DrainTimeout time.Duration
}

// Manager applies snapshots to running listeners.
type Manager struct {
	opts Options
	log  *zap.Logger

	mu       sync.Mutex
	running  map[string]*runningListener // by snapshot.Listener.Key()
	snap     snapshot.Snapshot
	problems []config.Problem
	// configProblems are the last reload's problems without the bind
	// failures, which RetryFailed refreshes on its own.
	configProblems []config.Problem
	bindFailures   int
	objects        []config.Resource // the merged sources of the last reload
	closed         bool

	// reloadMu serialises reloads with applies and deletes through the
	// admin API, so that each validates against the state it changes.
	reloadMu sync.Mutex

	draining sync.WaitGroup
}

type runningListener struct {
	spec   snapshot.Listener
	server *relay.Server
	ln     net.Listener
	served chan struct{} // closed when Serve returns
}

// New returns a manager with nothing running yet; call Reload.
func New(opts Options) *Manager {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	return &Manager{
		opts:    opts,
		log:     opts.Logger,
		running: make(map[string]*runningListener),
	}
}

// Result summarises one reload.
type Result struct {
	Listeners int // listeners serving after the reload
	Errors    int // error problems (discarded resources, unparsable files, failed binds)
	Warnings  int
}

// Load reads and resolves the configuration without applying it: what
// `tcpmapd check` prints.
func Load(paths []string, opts resolve.Options) (snapshot.Snapshot, []config.Problem) {
	resources, problems := config.Load(paths)
	snap, more := resolve.Resolve(resources, opts)
	return snap, append(problems, more...)
}

// Reload re-reads the configuration files and the store, merges them,
// resolves the result and applies it. Problems are logged and kept for
// Problems(); the valid rest is served.
func (m *Manager) Reload() Result {
	m.reloadMu.Lock()
	defer m.reloadMu.Unlock()
	return m.reload()
}

func (m *Manager) reload() Result {
	resources, problems := m.loadSources()
	snap, more := resolve.Resolve(resources, m.opts.Resolve)
	problems = append(problems, more...)
	snap, more = m.nodeLocal(snap)
	problems = append(problems, more...)
	for _, p := range problems {
		m.logProblem(p)
	}
	bindProblems := m.Apply(snap)
	if m.opts.Tables != nil {
		if err := m.opts.Tables.Sync(snap); err != nil {
			// Inspection only: traffic does not depend on the tables.
			m.log.Warn("sync listener tables into BPF maps", zap.Error(err))
		}
	}
	configProblems := problems
	problems = append(append([]config.Problem(nil), problems...), bindProblems...)

	m.mu.Lock()
	m.problems = problems
	m.configProblems = configProblems
	m.bindFailures = len(bindProblems)
	m.objects = resources
	res := Result{Listeners: len(m.running)}
	m.mu.Unlock()
	for _, p := range problems {
		if p.IsWarning() {
			res.Warnings++
		} else {
			res.Errors++
		}
	}
	return res
}

// nodeLocal drops the listeners whose address is not this node's, each
// with a warning on its mappings.
func (m *Manager) nodeLocal(snap snapshot.Snapshot) (snapshot.Snapshot, []config.Problem) {
	if m.opts.NodeAddress == nil {
		return snap, nil
	}
	var problems []config.Problem
	kept := snap.Listeners[:0:0]
	for _, l := range snap.Listeners {
		if l.Address == "" {
			kept = append(kept, l)
			continue
		}
		err := m.opts.NodeAddress(l.Address)
		if err == nil {
			kept = append(kept, l)
			continue
		}
		seen := map[config.Ref]bool{}
		for _, r := range l.Routes {
			for _, b := range r.Backends {
				if seen[b.Mapping] {
					continue
				}
				seen[b.Mapping] = true
				problems = append(problems, config.Problem{Ref: b.Mapping, Field: "spec.address",
					Reason: fmt.Sprintf("listener %s not opened on this node: %v", l.Key(), err), Level: "warning"})
			}
		}
	}
	snap.Listeners = kept
	return snap, problems
}

func (m *Manager) logProblem(p config.Problem) {
	fields := []zap.Field{
		zap.String("resource", p.Ref.String()),
		zap.String("field", p.Field),
		zap.String("reason", p.Reason),
		zap.String("origin", p.Origin.String()),
	}
	if p.Ref.Kind == "" {
		fields[0] = zap.String("resource", "")
	}
	if p.IsWarning() {
		m.log.Warn("config problem", fields...)
	} else {
		m.log.Error("config problem", fields...)
	}
}

// Apply makes the running listeners match snap. Listeners whose spec is
// unchanged are left alone; changed ones get the new routes for new
// connections; removed ones stop accepting at once and drain in the
// background. A listener that cannot be opened is reported and skipped.
func (m *Manager) Apply(snap snapshot.Snapshot) []config.Problem {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	want := make(map[string]snapshot.Listener, len(snap.Listeners))
	for _, l := range snap.Listeners {
		want[l.Key()] = l
	}

	// Close removed listeners first so that their ports are free for a
	// listener that moves between "all addresses" and one address.
	for key, run := range m.running {
		if _, ok := want[key]; !ok {
			m.log.Info("listener removed; draining", zap.String("listener", key))
			delete(m.running, key)
			m.drain(run)
		}
	}

	var problems []config.Problem
	keys := make([]string, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, key := range keys {
		spec := want[key]
		if run, ok := m.running[key]; ok {
			if reflect.DeepEqual(run.spec, spec) {
				continue
			}
			if err := run.server.Update(spec); err != nil {
				problems = append(problems, m.listenerProblem(spec, fmt.Errorf("update: %w", err)))
				continue
			}
			run.spec = spec
			m.log.Info("listener updated", zap.String("listener", key), zap.Int("routes", len(spec.Routes)))
			continue
		}
		run, err := m.start(spec)
		if err != nil {
			problems = append(problems, m.listenerProblem(spec, err))
			continue
		}
		m.running[key] = run
	}
	m.snap = snap
	return problems
}

func (m *Manager) listenerProblem(l snapshot.Listener, err error) config.Problem {
	p := config.Problem{Field: "port", Reason: fmt.Sprintf("listener %s: %v", l.Key(), err)}
	for _, r := range l.Routes {
		if len(r.Backends) > 0 {
			p.Ref = r.Backends[0].Mapping
			p.Field = "spec.port"
			break
		}
	}
	m.log.Error("listener failed", zap.String("listener", l.Key()), zap.Error(err))
	return p
}

func (m *Manager) start(spec snapshot.Listener) (*runningListener, error) {
	server, err := relay.NewServer(spec, m.opts.Relay)
	if err != nil {
		return nil, err
	}
	listen := m.opts.Listen
	if listen == nil {
		listen = BindListener
	}
	ln, err := listen(spec)
	if err != nil {
		return nil, err
	}
	run := &runningListener{spec: spec, server: server, ln: ln, served: make(chan struct{})}
	go func() {
		defer close(run.served)
		if err := server.Serve(ln); err != nil {
			m.log.Error("listener stopped", zap.String("listener", spec.Key()), zap.Error(err))
		}
	}()
	m.log.Info("listening", zap.String("listener", spec.Key()), zap.String("protocol", string(spec.Protocol)),
		zap.Int("routes", len(spec.Routes)))
	return run, nil
}

// BindListener opens a socket of its own for a listener.
func BindListener(spec snapshot.Listener) (net.Listener, error) {
	var lc net.ListenConfig
	return lc.Listen(context.Background(), "tcp", spec.BindAddress())
}

// drain stops run accepting now and lets its connections finish within the
// drain timeout, in the background.
func (m *Manager) drain(run *runningListener) {
	// Synchronously: a listener added in the same Apply may need the port.
	// Closing ln as well covers a Serve goroutine that has not registered
	// it with the server yet.
	run.server.StopAccepting()
	run.ln.Close()
	m.draining.Add(1)
	go func() {
		defer m.draining.Done()
		ctx, cancel := context.WithTimeout(context.Background(), m.opts.DrainTimeout)
		defer cancel()
		if err := run.server.Shutdown(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			m.log.Warn("drain", zap.String("listener", run.spec.Key()), zap.Error(err))
		}
		<-run.served
	}()
}

// Shutdown stops every listener from accepting and waits for live
// connections until ctx is done or the drain timeout passes.
func (m *Manager) Shutdown(ctx context.Context) error {
	m.mu.Lock()
	m.closed = true
	for key, run := range m.running {
		delete(m.running, key)
		m.drain(run)
	}
	m.mu.Unlock()

	done := make(chan struct{})
	go func() { m.draining.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// RetryFailed tries again to open the listeners of the current snapshot
// that could not be bound (a port another process held), so that a port
// freed later is served without a reload. It returns how many listeners
// still fail.
func (m *Manager) RetryFailed() int {
	m.reloadMu.Lock()
	defer m.reloadMu.Unlock()
	m.mu.Lock()
	failures, snap := m.bindFailures, m.snap
	m.mu.Unlock()
	if failures == 0 {
		return 0
	}
	bindProblems := m.Apply(snap)
	if m.opts.Tables != nil {
		if err := m.opts.Tables.Sync(snap); err != nil {
			// Inspection only: traffic does not depend on the tables.
			m.log.Warn("sync listener tables into BPF maps", zap.Error(err))
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(bindProblems) < failures {
		m.log.Info("listeners opened on retry", zap.Int("opened", failures-len(bindProblems)))
	}
	m.bindFailures = len(bindProblems)
	m.problems = append(append([]config.Problem(nil), m.configProblems...), bindProblems...)
	return len(bindProblems)
}

// Problems returns the problems of the last reload.
func (m *Manager) Problems() []config.Problem {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]config.Problem(nil), m.problems...)
}

// Snapshot returns the last applied snapshot.
func (m *Manager) Snapshot() snapshot.Snapshot {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.snap
}

// ListenerAddrs returns the bound address of every running listener, by key
// (useful when a port is 0 in tests).
func (m *Manager) ListenerAddrs() map[string]net.Addr {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]net.Addr, len(m.running))
	for k, r := range m.running {
		out[k] = r.ln.Addr()
	}
	return out
}

// runs returns the running listeners sorted by key, read under the lock
// so that callers can query their servers without holding it.
func (m *Manager) runs() []*runningListener {
	m.mu.Lock()
	runs := make([]*runningListener, 0, len(m.running))
	for _, r := range m.running {
		runs = append(runs, r)
	}
	m.mu.Unlock()
	sort.Slice(runs, func(i, j int) bool { return runs[i].spec.Key() < runs[j].spec.Key() })
	return runs
}

// ListenerStats is one running listener's spec and counters.
type ListenerStats struct {
	Spec  snapshot.Listener
	Stats relay.Stats
}

// Stats returns every running listener's counters, sorted by key.
func (m *Manager) Stats() []ListenerStats {
	runs := m.runs()
	out := make([]ListenerStats, 0, len(runs))
	for _, r := range runs {
		out = append(out, ListenerStats{Spec: r.spec, Stats: r.server.Stats()})
	}
	return out
}

// Conns lists the live connections of every running listener.
func (m *Manager) Conns() []relay.ConnInfo {
	var out []relay.ConnInfo
	for _, r := range m.runs() {
		out = append(out, r.server.Conns()...)
	}
	return out
}
