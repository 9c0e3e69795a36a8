package kube

import (
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/tcpmap/tcpmap/userspace/config"
)

func TestOutcomes(t *testing.T) {
	kube := config.Origin{Source: SourceName}
	file := config.Origin{Source: "file", File: "/etc/tcpmap/a.yaml", Line: 1}
	good := config.Ref{Kind: config.KindTCPMapping, Namespace: "a", Name: "good"}
	warned := config.Ref{Kind: config.KindTCPMapping, Namespace: "a", Name: "warned"}
	resolved := config.Ref{Kind: config.KindTCPMapping, Namespace: "a", Name: "resolved"}
	bad := config.Ref{Kind: config.KindTCPMapping, Namespace: "a", Name: "bad"}
	other := config.Ref{Kind: config.KindTCPMapping, Namespace: "a", Name: "other-id"}
	fromFile := config.Ref{Kind: config.KindTCPMapping, Namespace: "a", Name: "file"}
	objects := []config.Resource{
		{Ref: good, Origin: kube},
		{Ref: warned, Origin: kube},
		{Ref: resolved, Origin: kube},
		{Ref: other, Origin: kube, TCPMapping: &config.TCPMappingSpec{AmbassadorID: config.AmbassadorID{"blue"}}},
		{Ref: fromFile, Origin: file},
	}
	problems := []config.Problem{
		{Ref: warned, Origin: kube, Field: "spec.x", Reason: "odd", Level: "warning"},
		{Ref: resolved, Field: "spec.address", Reason: "not this node", Level: "error"},
		{Ref: bad, Origin: kube, Field: "spec.port", Reason: "too big", Level: "error"},
		{Ref: bad, Origin: kube, Field: "spec.wieght", Reason: "unknown field", Level: "error"},
		{Ref: good, Origin: file, Field: "metadata.name", Reason: "clash in the file", Level: "error"},
		{Ref: fromFile, Origin: file, Reason: "broken", Level: "error"},
	}
	got := Outcomes(config.Outcomes(objects, problems, "default"))
	want := map[config.Ref]Outcome{
		good:     {corev1.EventTypeNormal, ReasonAccepted, "accepted by tcpmap"},
		warned:   {corev1.EventTypeNormal, ReasonAccepted, "accepted by tcpmap with warnings: spec.x: odd"},
		resolved: {corev1.EventTypeWarning, ReasonRejected, "rejected by tcpmap: spec.address: not this node"},
		bad:      {corev1.EventTypeWarning, ReasonRejected, "rejected by tcpmap: spec.port: too big; spec.wieght: unknown field"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Outcomes:\ngot  %v\nwant %v", got, want)
	}
}

func TestPublishedDiff(t *testing.T) {
	a := config.Ref{Kind: config.KindTCPMapping, Namespace: "n", Name: "a"}
	b := config.Ref{Kind: config.KindHost, Namespace: "n", Name: "b"}
	ok := Outcome{corev1.EventTypeNormal, ReasonAccepted, "accepted by tcpmap"}
	rej := Outcome{corev1.EventTypeWarning, ReasonRejected, "rejected by tcpmap: spec.port: too big"}
	uids := map[config.Ref]string{a: "uid-a", b: "uid-b"}
	uid := func(r config.Ref) string { return uids[r] }

	var p published
	steps := []struct {
		name  string
		now   map[config.Ref]Outcome
		setup func()
		want  []config.Ref
	}{
		{"first reload announces everything", map[config.Ref]Outcome{a: ok, b: ok}, nil, []config.Ref{b, a}},
		{"same outcomes: nothing", map[config.Ref]Outcome{a: ok, b: ok}, nil, nil},
		{"a rejected", map[config.Ref]Outcome{a: rej, b: ok}, nil, []config.Ref{a}},
		{"still rejected: nothing", map[config.Ref]Outcome{a: rej, b: ok}, nil, nil},
		{"b re-created with a new uid", map[config.Ref]Outcome{a: rej, b: ok}, func() { uids[b] = "uid-b2" }, []config.Ref{b}},
		{"a gone from the API server: no event", map[config.Ref]Outcome{a: ok, b: ok}, func() { delete(uids, a) }, nil},
		{"a back: announced again", map[config.Ref]Outcome{a: ok, b: ok}, func() { uids[a] = "uid-a3" }, []config.Ref{a}},
		{"b deleted, then back with the same outcome", map[config.Ref]Outcome{a: ok}, nil, nil},
		{"b returns", map[config.Ref]Outcome{a: ok, b: ok}, nil, []config.Ref{b}},
	}
	for _, s := range steps {
		if s.setup != nil {
			s.setup()
		}
		if got := p.diff(s.now, uid); !reflect.DeepEqual(got, s.want) {
			t.Errorf("%s: got %v, want %v", s.name, got, s.want)
		}
	}
}
