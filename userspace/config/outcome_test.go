package config

import (
	"reflect"
	"testing"
)

func TestOutcomes(t *testing.T) {
	kube := Origin{Source: "kubernetes"}
	fileA := Origin{Source: "file", File: "/etc/tcpmap/a.yaml", Line: 1}
	fileB := Origin{Source: "file", File: "/etc/tcpmap/b.yaml", Line: 4}
	ref := func(kind, name string) Ref { return Ref{Kind: kind, Namespace: "n", Name: name} }
	good, warned, resolved, bad, blue, clash := ref(KindTCPMapping, "good"), ref(KindTCPMapping, "warned"),
		ref(KindTCPMapping, "resolved"), ref(KindTCPMapping, "bad"), ref(KindTCPMapping, "blue"), ref(KindTLSContext, "clash")

	objects := []Resource{
		{Ref: good, Origin: fileA},
		{Ref: warned, Origin: kube},
		{Ref: resolved, Origin: kube},
		{Ref: blue, Origin: kube, TCPMapping: &TCPMappingSpec{AmbassadorID: AmbassadorID{"blue"}}},
		{Ref: clash, Origin: fileA}, // the older copy serves
	}
	problems := []Problem{
		// Sourceless problems come first: they must still reach "bad",
		// which only a later, sourced problem makes known.
		{Ref: bad, Field: "spec.service", Reason: "no such upstream"},
		{Ref: resolved, Field: "spec.address", Reason: "not this node"},
		{Ref: warned, Origin: kube, Field: "spec.x", Reason: "odd", Level: "warning"},
		{Ref: bad, Origin: fileB, Field: "spec.port", Reason: "too big"},
		{Ref: bad, Origin: fileB, Field: "spec.port", Reason: "too big"}, // reported twice, listed once
		{Ref: clash, Origin: kube, Field: "metadata.name", Reason: "already defined in /etc/tcpmap/a.yaml:1"},
		{Ref: blue, Origin: kube, Field: "spec.port", Reason: "too big"},
		{Origin: fileB, Reason: "yaml: line 9: did not find expected key"}, // no resource
	}
	got := Outcomes(objects, problems, "default")
	want := []Outcome{
		{Ref: bad, Origin: fileB, State: Rejected, Errors: []string{"spec.service: no such upstream", "spec.port: too big"}},
		{Ref: blue, Origin: kube, State: Ignored, Errors: []string{"spec.port: too big"}},
		{Ref: good, Origin: fileA, State: Accepted},
		{Ref: resolved, Origin: kube, State: Rejected, Errors: []string{"spec.address: not this node"}},
		{Ref: warned, Origin: kube, State: Accepted, Warnings: []string{"spec.x: odd"}},
		{Ref: clash, Origin: fileA, State: Accepted},
		{Ref: clash, Origin: kube, State: Rejected, Errors: []string{"metadata.name: already defined in /etc/tcpmap/a.yaml:1"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Outcomes:\ngot  %+v\nwant %+v", got, want)
	}

	summaries := map[string]string{}
	for _, o := range got {
		summaries[o.Ref.Name+"@"+o.Origin.Source] = o.Summary()
	}
	for key, want := range map[string]string{
		"bad@file":          "rejected: spec.service: no such upstream; spec.port: too big",
		"warned@kubernetes": "accepted with warnings: spec.x: odd",
		"good@file":         "accepted",
		"blue@kubernetes":   "ignored: its ambassador_id names another installation",
	} {
		if summaries[key] != want {
			t.Errorf("Summary of %s = %q, want %q", key, summaries[key], want)
		}
	}
}

func TestOutcomesEmpty(t *testing.T) {
	if got := Outcomes(nil, nil, "default"); len(got) != 0 {
		t.Errorf("Outcomes of nothing = %v", got)
	}
}
