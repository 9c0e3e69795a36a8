package kube

import (
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/tcpmap/tcpmap/userspace/config"
)

// Event reasons, as `kubectl describe` and `kubectl get events` show them.
const (
	ReasonAccepted = "Accepted"
	ReasonRejected = "Rejected"
)

// maxMessage bounds an Event's message; the API server refuses longer
// ones, and a resource with many problems must still get its Event.
const maxMessage = 1000

// Outcome is what the last reload made of one resource: Accepted (a Normal
// Event, possibly naming warnings) or Rejected (a Warning Event with the
// reasons it was discarded).
type Outcome struct {
	Type    string // corev1.EventTypeNormal or corev1.EventTypeWarning
	Reason  string // ReasonAccepted or ReasonRejected
	Message string
}

// Outcomes computes the outcome of every Kubernetes resource of a reload:
// those among objects (loaded) and those only in problems (rejected while
// loading). A problem counts for a resource when it comes from Kubernetes
// or from no source in particular (resolution, node filtering); a file's
// problem on an object of the same name does not. Resources for which
// skip returns true (another ambassador_id) are left out.
func Outcomes(objects []config.Resource, problems []config.Problem, skip func(config.Resource) bool) map[config.Ref]Outcome {
	ours := make(map[config.Ref]bool)
	for _, r := range objects {
		if r.Origin.Source == SourceName && (skip == nil || !skip(r)) {
			ours[r.Ref] = true
		}
	}
	for _, p := range problems {
		if p.Origin.Source == SourceName && p.Ref.Kind != "" {
			ours[p.Ref] = true
		}
	}
	errs := make(map[config.Ref][]string)
	warns := make(map[config.Ref][]string)
	for _, p := range problems {
		if !ours[p.Ref] || (p.Origin.Source != SourceName && p.Origin.Source != "") {
			continue
		}
		text := p.Reason
		if p.Field != "" {
			text = p.Field + ": " + p.Reason
		}
		if p.IsWarning() {
			warns[p.Ref] = appendOnce(warns[p.Ref], text)
		} else {
			errs[p.Ref] = appendOnce(errs[p.Ref], text)
		}
	}
	out := make(map[config.Ref]Outcome, len(ours))
	for ref := range ours {
		switch {
		case len(errs[ref]) > 0:
			out[ref] = Outcome{Type: corev1.EventTypeWarning, Reason: ReasonRejected,
				Message: truncate("rejected by tcpmap: " + strings.Join(errs[ref], "; "))}
		case len(warns[ref]) > 0:
			out[ref] = Outcome{Type: corev1.EventTypeNormal, Reason: ReasonAccepted,
				Message: truncate("accepted by tcpmap with warnings: " + strings.Join(warns[ref], "; "))}
		default:
			out[ref] = Outcome{Type: corev1.EventTypeNormal, Reason: ReasonAccepted, Message: "accepted by tcpmap"}
		}
	}
	return out
}

func appendOnce(list []string, s string) []string {
	for _, x := range list {
		if x == s {
			return list
		}
	}
	return append(list, s)
}

func truncate(s string) string {
	if len(s) <= maxMessage {
		return s
	}
	return s[:maxMessage-3] + "..."
}

// published remembers the outcome last announced for each resource, and
// the object (uid) it was announced on, so that an Event is emitted only
// when the outcome changes or the object is re-created: reloads happen on
// every change of any resource and must not flood the API server.
type published struct {
	last map[config.Ref]announced
}

type announced struct {
	uid     string
	outcome Outcome
}

// diff returns the resources, in a stable order, whose Event is due, and
// forgets the ones no longer present. uid looks up the current object's
// uid; "" means it is gone from the API server (no Event).
func (p *published) diff(now map[config.Ref]Outcome, uid func(config.Ref) string) []config.Ref {
	if p.last == nil {
		p.last = make(map[config.Ref]announced)
	}
	for ref := range p.last {
		if _, ok := now[ref]; !ok {
			delete(p.last, ref)
		}
	}
	var due []config.Ref
	for ref, o := range now {
		id := uid(ref)
		if id == "" {
			delete(p.last, ref)
			continue
		}
		if prev, ok := p.last[ref]; ok && prev.uid == id && prev.outcome == o {
			continue
		}
		p.last[ref] = announced{uid: id, outcome: o}
		due = append(due, ref)
	}
	sort.Slice(due, func(i, j int) bool { return refLess(due[i], due[j]) })
	return due
}

func refLess(a, b config.Ref) bool {
	if a.Kind != b.Kind {
		return a.Kind < b.Kind
	}
	if a.Namespace != b.Namespace {
		return a.Namespace < b.Namespace
	}
	return a.Name < b.Name
}
