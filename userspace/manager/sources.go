package manager

import (
	"bytes"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/tcpmap/tcpmap/userspace/config"
	"github.com/tcpmap/tcpmap/userspace/resolve"
	"github.com/tcpmap/tcpmap/userspace/store"
)

// Source is a provider of resources besides the configuration files and
// the admin API's store, such as the Kubernetes API. Its resources are
// validated and resolved exactly like a file's; their Origin.Source names
// the source, so the admin API refuses to delete them.
type Source interface {
	// Name is how problems and clashes refer to the source ("kubernetes").
	Name() string
	// Resources returns the source's current objects and the problems of
	// the ones it could not decode. It must not block on the network: a
	// source serves its last good copy while its backend is away.
	Resources() ([]config.Resource, []config.Problem)
}

// Referrer is a Source that also supplies what the files' and the
// store's resources name but do not hold, such as the Kubernetes Secret
// of a file's TLSContext. Before each Resources it is told those
// resources, which it must not modify.
type Referrer interface {
	Referenced(others []config.Resource)
}

// loadSources reads the configuration files, the other sources and the
// store, and merges them in that order.
func (m *Manager) loadSources() ([]config.Resource, []config.Problem) {
	return m.loadSourcesWith(nil)
}

// loadSourcesWith is loadSources with the store's entries replaced by
// applied when it is non-nil (an apply's dry run).
func (m *Manager) loadSourcesWith(applied []config.Resource) ([]config.Resource, []config.Problem) {
	files, applied, problems, storeProblems := m.readLocal(applied)
	m.tellReferrers(files, applied)
	layers := [][]config.Resource{files}
	for _, src := range m.opts.Sources {
		rs, more := src.Resources()
		problems = append(problems, more...)
		layers = append(layers, rs)
	}
	problems = append(problems, storeProblems...)
	merged, clashes := Merge(append(layers, applied)...)
	return merged, append(problems, clashes...)
}

// readLocal reads the configuration files and, unless applied is given
// (an apply's dry run), the store.
func (m *Manager) readLocal(applied []config.Resource) (files, stored []config.Resource, fileProblems, storeProblems []config.Problem) {
	files, fileProblems = config.Load(m.opts.ConfigPaths)
	if applied == nil && m.opts.Store != nil {
		var entries []store.Entry
		entries, storeProblems = m.opts.Store.Load()
		applied = resources(entries)
	}
	return files, applied, fileProblems, storeProblems
}

// tellReferrers tells every Referrer source what the files and the store
// hold, before it is asked for its Resources.
func (m *Manager) tellReferrers(files, stored []config.Resource) {
	var others []config.Resource
	for _, src := range m.opts.Sources {
		if r, ok := src.(Referrer); ok {
			if others == nil {
				others = append(append(make([]config.Resource, 0, len(files)+len(stored)), files...), stored...)
			}
			r.Referenced(others)
		}
	}
}

// TellReferrers tells every Referrer source what the files and the store
// hold now, before the first reload: a source that must fetch what they
// name can then wait for it, and the first reload need not reject a
// resource whose Secret is still on its way. Without a Referrer it reads
// nothing.
func (m *Manager) TellReferrers() {
	for _, src := range m.opts.Sources {
		if _, ok := src.(Referrer); ok {
			files, stored, _, _ := m.readLocal(nil)
			m.tellReferrers(files, stored)
			return
		}
	}
}

func resources(entries []store.Entry) []config.Resource {
	out := make([]config.Resource, len(entries))
	for i, e := range entries {
		out[i] = e.Resource
	}
	return out
}

// Merge joins the resources of several sources, oldest first: the
// configuration files (the operator's base configuration), then other
// sources such as Kubernetes, then the objects applied through the admin
// API. In resolution the earlier resource wins a conflict. A name already
// used by an earlier source is an error on the newer copy, which is
// dropped; the earlier object is kept.
func Merge(sources ...[]config.Resource) ([]config.Resource, []config.Problem) {
	seen := make(map[config.Ref]config.Origin)
	var out []config.Resource
	var problems []config.Problem
	for _, rs := range sources {
		for _, r := range rs {
			if first, ok := seen[r.Ref]; ok {
				problems = append(problems, clashProblem(r, first))
				continue
			}
			seen[r.Ref] = r.Origin
			out = append(out, r)
		}
	}
	return out, problems
}

func clashProblem(r config.Resource, first config.Origin) config.Problem {
	fix := "remove one of them"
	if r.Origin.Source == store.Source {
		fix = "remove it with tcpmapctl remove"
	}
	return config.Problem{
		Ref:    r.Ref,
		Origin: r.Origin,
		Field:  "metadata.name",
		Reason: fmt.Sprintf("defined both in %s and by %s; the first is served and this copy is ignored (%s)",
			describeOrigin(first), describeOrigin(r.Origin), fix),
		Level: "error",
	}
}

// describeOrigin names a source for a clash message: the file, the admin
// API, or the source's name.
func describeOrigin(o config.Origin) string {
	switch {
	case o.File != "" && o.Source != store.Source:
		return o.String()
	case o.Source == store.Source:
		return "the admin API"
	case o.Source != "":
		return o.Source
	default:
		return "a configuration file"
	}
}

// Objects returns the loaded objects of every source, as of the last
// reload, sorted by kind, namespace and name. An object whose source
// rejected it is not among them; Problems says why.
func (m *Manager) Objects() []config.Resource {
	m.mu.Lock()
	out := append([]config.Resource(nil), m.objects...)
	m.mu.Unlock()
	sort.SliceStable(out, func(i, j int) bool { return config.RefLess(out[i].Ref, out[j].Ref) })
	return out
}

// Outcomes returns what the last reload made of each resource of every
// source: accepted, rejected (with the reasons) or ignored.
func (m *Manager) Outcomes() []config.Outcome {
	m.mu.Lock()
	objects, problems := m.objects, m.problems // replaced on reload, never changed in place
	m.mu.Unlock()
	return config.Outcomes(objects, problems, idOrDefault(m.opts.Resolve.AmbassadorID))
}

// Object returns the loaded object ref, or false.
func (m *Manager) Object(ref config.Ref) (config.Resource, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, r := range m.objects {
		if r.Ref == ref {
			return r, true
		}
	}
	return config.Resource{}, false
}

// Errors of ApplyObjects and DeleteObject.
var (
	// ErrNoStore: the daemon runs without a state directory.
	ErrNoStore = errors.New("objects cannot be applied or removed: tcpmapd runs without --state-dir")
	// ErrNotFound: no source holds the object.
	ErrNotFound = errors.New("not found")
)

// RejectedError is an apply refused whole: nothing was stored or applied.
type RejectedError struct {
	Problems []config.Problem
}

func (e *RejectedError) Error() string {
	msgs := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		msgs[i] = problemText(p)
	}
	return fmt.Sprintf("rejected, nothing applied: %s", strings.Join(msgs, "; "))
}

// SourceError is a delete refused because the object comes from a source
// the admin API does not own (a file, later Kubernetes).
type SourceError struct {
	Ref    config.Ref
	Origin config.Origin
}

func (e *SourceError) Error() string {
	if e.Origin.File != "" {
		return fmt.Sprintf("%s comes from %s; edit that file instead", e.Ref, e.Origin)
	}
	return fmt.Sprintf("%s comes from %s, not the admin API; change it there instead", e.Ref, e.Origin.Source)
}

// problemText is a problem's message with its source when the message
// does not already name a file.
func problemText(p config.Problem) string {
	s := p.Error()
	if p.Origin.File == "" && p.Origin.Source != "" && p.Ref.Kind != "" {
		s += " (" + p.Origin.Source + ")"
	}
	return s
}

// Change is what an apply did to one object: "created", "replaced" or
// "unchanged".
type Change struct {
	Ref    config.Ref
	Action string
}

// ApplyResult is an accepted apply.
type ApplyResult struct {
	Changes []Change
	// Warnings are the applied objects' warnings; they are served anyway.
	Warnings []config.Problem
	Reload   Result
}

// ApplyObjects validates a YAML or JSON stream of objects exactly as a
// configuration file (name is how its problems refer to it), then dry-runs
// the resolution of every source with the objects added. If any applied
// object has an error, the whole stream is rejected with a *RejectedError
// and nothing changes; else the objects are stored, replacing earlier ones
// of the same kind, namespace and name, and the manager reloads.
func (m *Manager) ApplyObjects(name string, data []byte) (ApplyResult, error) {
	if m.opts.Store == nil {
		return ApplyResult{}, ErrNoStore
	}
	m.reloadMu.Lock()
	defer m.reloadMu.Unlock()

	applied, problems := config.LoadBytes(name, data, config.Origin{Source: store.Source})
	var errs, warnings []config.Problem
	for _, p := range problems {
		if p.IsWarning() {
			warnings = append(warnings, p)
		} else {
			errs = append(errs, p)
		}
	}
	if len(errs) > 0 {
		return ApplyResult{}, &RejectedError{Problems: errs}
	}
	if len(applied) == 0 {
		return ApplyResult{}, &RejectedError{Problems: append(warnings, config.Problem{
			Origin: config.Origin{Source: store.Source, File: name},
			Reason: "no TCPMapping, TLSContext, Host, Listener, Module or Secret to apply", Level: "error"})}
	}
	docs, err := store.Split(data)
	if err != nil {
		return ApplyResult{}, err
	}
	isApplied := make(map[config.Ref]bool, len(applied))
	for i := range applied {
		applied[i].Origin = config.Origin{Source: store.Source}
		if docs[applied[i].Ref] == nil {
			return ApplyResult{}, fmt.Errorf("%s: its document was not found in the request", applied[i].Ref)
		}
		isApplied[applied[i].Ref] = true
	}

	// Dry run: what the next reload would see, the applied objects as the
	// newest of the store.
	entries, _ := m.opts.Store.Load()
	var kept []config.Resource
	old := make(map[config.Ref][]byte)
	for _, e := range entries {
		if isApplied[e.Resource.Ref] {
			old[e.Resource.Ref] = e.Data
			continue
		}
		kept = append(kept, e.Resource)
	}
	merged, clashes := m.loadSourcesWith(append(kept, applied...))
	_, more := resolve.Resolve(merged, m.opts.Resolve)
	for _, p := range append(clashes, more...) {
		if !isApplied[p.Ref] || p.Origin.Source != store.Source {
			continue
		}
		if p.IsWarning() {
			warnings = append(warnings, p)
		} else {
			errs = append(errs, p)
		}
	}
	for _, r := range applied {
		if ids, ok := r.AmbassadorID(); ok && !ids.Matches(idOrDefault(m.opts.Resolve.AmbassadorID)) {
			warnings = append(warnings, config.Problem{Ref: r.Ref, Origin: r.Origin, Field: "spec.ambassador_id",
				Reason: fmt.Sprintf("does not include this node's ambassador_id %q; stored but not served", idOrDefault(m.opts.Resolve.AmbassadorID)),
				Level:  "warning"})
		}
	}
	if len(errs) > 0 {
		return ApplyResult{}, &RejectedError{Problems: errs}
	}

	res := ApplyResult{Warnings: warnings}
	var done []config.Ref
	for _, r := range applied {
		doc := docs[r.Ref]
		action := "created"
		if prev, ok := old[r.Ref]; ok {
			action = "replaced"
			if bytes.Equal(prev, doc) {
				res.Changes = append(res.Changes, Change{Ref: r.Ref, Action: "unchanged"})
				continue
			}
		}
		if err := m.opts.Store.Put(r.Ref, doc); err != nil {
			m.undo(done, old)
			return ApplyResult{}, err
		}
		done = append(done, r.Ref)
		res.Changes = append(res.Changes, Change{Ref: r.Ref, Action: action})
	}
	res.Reload = m.reload()
	return res, nil
}

// undo puts back what a failed apply changed, as far as the disk lets it.
func (m *Manager) undo(done []config.Ref, old map[config.Ref][]byte) {
	for _, ref := range done {
		if prev, ok := old[ref]; ok {
			_ = m.opts.Store.Put(ref, prev)
		} else {
			_, _ = m.opts.Store.Delete(ref)
		}
	}
}

func idOrDefault(id string) string {
	if id == "" {
		return "default"
	}
	return id
}

// DeleteResult is an accepted delete. Shadowed names the file whose object
// of the same name stays in service, when the removed copy clashed with it.
type DeleteResult struct {
	Shadowed config.Origin
	Reload   Result
}

// DeleteObject removes an object applied through the admin API and reloads.
// An object from another source is refused with a *SourceError naming it;
// an unknown one with ErrNotFound.
func (m *Manager) DeleteObject(ref config.Ref) (DeleteResult, error) {
	m.reloadMu.Lock()
	defer m.reloadMu.Unlock()
	var other *config.Origin
	if r, ok := m.Object(ref); ok && r.Origin.Source != store.Source {
		other = &r.Origin
	}
	if other == nil {
		// A file object its file's errors rejected is still the file's.
		for _, p := range m.Problems() {
			if p.Ref == ref && p.Origin.Source != store.Source && p.Origin.Source != "" {
				o := p.Origin
				other = &o
				break
			}
		}
	}
	if m.opts.Store != nil {
		if _, ok := m.opts.Store.Get(ref); ok {
			if _, err := m.opts.Store.Delete(ref); err != nil {
				return DeleteResult{}, err
			}
			res := DeleteResult{Reload: m.reload()}
			if other != nil {
				res.Shadowed = *other
			}
			return res, nil
		}
	}
	if other != nil {
		return DeleteResult{}, &SourceError{Ref: ref, Origin: *other}
	}
	return DeleteResult{}, fmt.Errorf("%s: %w", ref, ErrNotFound)
}
