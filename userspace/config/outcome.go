package config

import (
	"sort"
	"strings"
)

// Outcome states: what a reload made of one resource.
const (
	Accepted = "accepted" // served, possibly with warnings
	Rejected = "rejected" // discarded whole, for the Errors
	Ignored  = "ignored"  // meant for another installation (ambassador_id)
)

// Outcome is the verdict of the last reload on one resource of one source:
// what `tcpmapctl status` lists and what a Kubernetes Event announces.
type Outcome struct {
	Ref      Ref
	Origin   Origin
	State    string   // Accepted, Rejected or Ignored
	Errors   []string // "field: reason", why it was rejected
	Warnings []string // "field: reason", accepted anyway
}

// outcomeKey tells apart two copies of one Ref from different sources
// (the newer one of a clash is rejected, the older one serves) or from
// different files.
type outcomeKey struct {
	ref          Ref
	source, file string
}

func keyOf(ref Ref, o Origin) outcomeKey { return outcomeKey{ref, o.Source, o.File} }

// Outcomes computes the outcome of every resource of a reload: those among
// objects (loaded from some source) and those only in problems (rejected
// while loading, so never an object). A problem with a source applies to
// that source's copy; one with no source (resolution, node filtering)
// applies to every loaded copy of its Ref. Resources whose ambassador_id
// does not match ambassadorID are Ignored, whatever their problems.
// File-level problems (no Kind) belong to no resource and are left out.
// The result is sorted by kind, namespace, name, then source.
func Outcomes(objects []Resource, problems []Problem, ambassadorID string) []Outcome {
	byKey := make(map[outcomeKey]*Outcome)
	byRef := make(map[Ref][]*Outcome)
	add := func(ref Ref, o Origin) *Outcome {
		k := keyOf(ref, o)
		if out := byKey[k]; out != nil {
			return out
		}
		out := &Outcome{Ref: ref, Origin: o, State: Accepted}
		byKey[k] = out
		byRef[ref] = append(byRef[ref], out)
		return out
	}
	for _, r := range objects {
		out := add(r.Ref, r.Origin)
		if ids, ok := r.AmbassadorID(); ok && !ids.Matches(ambassadorID) {
			out.State = Ignored
		}
	}
	// A resource rejected while loading is known only from its problems;
	// register those first so a later sourceless problem reaches them too.
	for _, p := range problems {
		if p.Ref.Kind != "" && p.Origin.Source != "" {
			add(p.Ref, p.Origin)
		}
	}
	for _, p := range problems {
		if p.Ref.Kind == "" {
			continue
		}
		targets := byRef[p.Ref]
		if p.Origin.Source != "" {
			targets = []*Outcome{byKey[keyOf(p.Ref, p.Origin)]}
		}
		text := p.Reason
		if p.Field != "" {
			text = p.Field + ": " + p.Reason
		}
		for _, out := range targets {
			if p.IsWarning() {
				out.Warnings = appendOnce(out.Warnings, text)
			} else {
				out.Errors = appendOnce(out.Errors, text)
			}
		}
	}
	list := make([]Outcome, 0, len(byKey))
	for _, out := range byKey {
		if out.State == Accepted && len(out.Errors) > 0 {
			out.State = Rejected
		}
		list = append(list, *out)
	}
	sort.Slice(list, func(i, j int) bool {
		a, b := list[i], list[j]
		if a.Ref != b.Ref {
			return RefLess(a.Ref, b.Ref)
		}
		if a.Origin.Source != b.Origin.Source {
			return a.Origin.Source < b.Origin.Source
		}
		return a.Origin.File < b.Origin.File
	})
	return list
}

// Summary is the outcome in one line: "accepted", "accepted with
// warnings: spec.x: odd", "rejected: spec.port: too big; ...".
func (o Outcome) Summary() string {
	switch {
	case o.State == Rejected:
		return Rejected + ": " + strings.Join(o.Errors, "; ")
	case o.State == Accepted && len(o.Warnings) > 0:
		return Accepted + " with warnings: " + strings.Join(o.Warnings, "; ")
	case o.State == Ignored:
		return Ignored + ": its ambassador_id names another installation"
	default:
		return o.State
	}
}

// RefLess orders refs by kind, namespace, then name.
func RefLess(a, b Ref) bool {
	if a.Kind != b.Kind {
		return a.Kind < b.Kind
	}
	if a.Namespace != b.Namespace {
		return a.Namespace < b.Namespace
	}
	return a.Name < b.Name
}

func appendOnce(list []string, s string) []string {
	for _, x := range list {
		if x == s {
			return list
		}
	}
	return append(list, s)
}
