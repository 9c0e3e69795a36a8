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

// Outcomes turns a reload's outcomes (config.Outcomes) into the Event due
// on each Kubernetes resource. Copies of a resource from other sources (a
// file's clash on the same name) do not count, and resources meant for
// another installation (ambassador_id) get no Event.
func Outcomes(outcomes []config.Outcome) map[config.Ref]Outcome {
	out := make(map[config.Ref]Outcome)
	for _, o := range outcomes {
		if o.Origin.Source != SourceName || o.State == config.Ignored {
			continue
		}
		switch {
		case o.State == config.Rejected:
			out[o.Ref] = Outcome{Type: corev1.EventTypeWarning, Reason: ReasonRejected,
				Message: truncate("rejected by tcpmap: " + strings.Join(o.Errors, "; "))}
		case len(o.Warnings) > 0:
			out[o.Ref] = Outcome{Type: corev1.EventTypeNormal, Reason: ReasonAccepted,
				Message: truncate("accepted by tcpmap with warnings: " + strings.Join(o.Warnings, "; "))}
		default:
			out[o.Ref] = Outcome{Type: corev1.EventTypeNormal, Reason: ReasonAccepted, Message: "accepted by tcpmap"}
		}
	}
	return out
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
	sort.Slice(due, func(i, j int) bool { return config.RefLess(due[i], due[j]) })
	return due
}
