package kube

import (
	"reflect"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/tcpmap/tcpmap/userspace/config"
)

// fromAPI is a TCPMapping as the API server returns it: server-populated
// metadata, kubectl's annotation and a status.
const fromAPI = `apiVersion: getambassador.io/v3alpha1
kind: TCPMapping
metadata:
  name: ssh
  namespace: apps
  uid: 0b6f1f2e-1111-2222-3333-444455556666
  resourceVersion: "4711"
  generation: 3
  creationTimestamp: "2026-11-01T10:00:00Z"
  labels: {team: ops}
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: '{"apiVersion":"getambassador.io/v3alpha1"}'
    tcpmap.io/connect-timeout-ms: "1500"
  managedFields:
  - manager: kubectl
    operation: Update
    fieldsV1: {"f:spec": {}}
spec:
  port: 2222
  service: ssh.apps:22
status:
  state: whatever
`

func object(t *testing.T, text string) map[string]any {
	t.Helper()
	var obj map[string]any
	if err := yaml.Unmarshal([]byte(text), &obj); err != nil {
		t.Fatal(err)
	}
	return obj
}

func TestClean(t *testing.T) {
	obj := object(t, fromAPI)
	got := Clean(obj)
	want := object(t, `apiVersion: getambassador.io/v3alpha1
kind: TCPMapping
metadata:
  name: ssh
  namespace: apps
  labels: {team: ops}
  annotations:
    tcpmap.io/connect-timeout-ms: "1500"
spec:
  port: 2222
  service: ssh.apps:22
`)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Clean:\ngot  %v\nwant %v", got, want)
	}
	if _, ok := obj["status"]; !ok {
		t.Error("Clean modified its input (status removed)")
	}
	if ann := obj["metadata"].(map[string]any)["annotations"].(map[string]any); ann[lastApplied] == nil {
		t.Error("Clean modified its input (last-applied annotation removed)")
	}
	// Only the last-applied annotation: no empty annotations map is left.
	only := object(t, "apiVersion: v1\nkind: Secret\nmetadata:\n  name: a\n  annotations:\n    "+lastApplied+": x\n")
	if _, ok := Clean(only)["metadata"].(map[string]any)["annotations"]; ok {
		t.Error("Clean left an empty annotations map")
	}
}

func TestConvert(t *testing.T) {
	tests := []struct {
		name      string
		obj       string
		wantRefs  []string
		wantProbs []string // Problem.Error() of each problem
	}{
		{
			name:     "as the API server returns it",
			obj:      fromAPI,
			wantRefs: []string{"TCPMapping apps/ssh"},
		},
		{
			name: "unknown spec field is named with the resource",
			obj: `apiVersion: getambassador.io/v3alpha1
kind: TCPMapping
metadata: {name: bad, namespace: apps, uid: x, resourceVersion: "1"}
spec: {port: 2222, service: "a:1", wieght: 10}
`,
			wantProbs: []string{"TCPMapping apps/bad: spec.wieght: unknown field"},
		},
		{
			name: "validation error as a file would get it",
			obj: `apiVersion: getambassador.io/v3alpha1
kind: TCPMapping
metadata: {name: big, namespace: apps}
spec: {port: 70000, service: "a:1"}
`,
			wantProbs: []string{"TCPMapping apps/big: spec.port: "},
		},
		{
			name: "unknown metadata field the API server might add is dropped",
			obj: `apiVersion: getambassador.io/v3alpha1
kind: TLSContext
metadata: {name: c, namespace: apps, someFutureField: 1}
spec: {hosts: [a.example], secret: s}
`,
			wantRefs: []string{"TLSContext apps/c"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs, probs := Convert(object(t, tt.obj))
			var gotRefs []string
			for _, r := range rs {
				gotRefs = append(gotRefs, r.Ref.String())
				if r.Origin != (config.Origin{Source: SourceName}) {
					t.Errorf("%s origin %+v, want source %s only", r.Ref, r.Origin, SourceName)
				}
			}
			if !reflect.DeepEqual(gotRefs, tt.wantRefs) {
				t.Errorf("resources %v, want %v", gotRefs, tt.wantRefs)
			}
			if len(probs) != len(tt.wantProbs) {
				t.Fatalf("problems %v, want %d", probs, len(tt.wantProbs))
			}
			for i, p := range probs {
				if got := p.Error(); !strings.HasPrefix(got, tt.wantProbs[i]) {
					t.Errorf("problem %q, want prefix %q", got, tt.wantProbs[i])
				}
				if p.Origin != (config.Origin{Source: SourceName}) {
					t.Errorf("problem origin %+v, want source %s only", p.Origin, SourceName)
				}
			}
		})
	}
}

func TestConvertKeepsAnnotationValue(t *testing.T) {
	rs, probs := Convert(object(t, fromAPI))
	if len(probs) != 0 || len(rs) != 1 {
		t.Fatalf("got %v, %v", rs, probs)
	}
	if got, ok := rs[0].ConnectTimeout(); !ok || got.Milliseconds() != 1500 {
		t.Errorf("connect timeout %v %v, want 1500ms", got, ok)
	}
}

func TestReferencedSecrets(t *testing.T) {
	yes := true
	no := false
	rs := []config.Resource{
		{Ref: config.Ref{Kind: config.KindTLSContext, Namespace: "a", Name: "c1"},
			TLSContext: &config.TLSContextSpec{Secret: "s1", CASecret: "ca.other"}},
		{Ref: config.Ref{Kind: config.KindTLSContext, Namespace: "a", Name: "c2"},
			TLSContext: &config.TLSContextSpec{Secret: "with.dot", SecretNamespacing: &no}},
		{Ref: config.Ref{Kind: config.KindHost, Namespace: "b", Name: "h"},
			Host: &config.HostSpec{TLSSecret: &config.SecretRef{Name: "hs"},
				TLS: &config.HostTLS{CASecret: "hca", SecretNamespacing: &yes}}},
		{Ref: config.Ref{Kind: config.KindHost, Namespace: "b", Name: "h2"},
			Host: &config.HostSpec{TLSSecret: &config.SecretRef{Name: "x", Namespace: "c"}}},
	}
	got := referencedSecrets(rs)
	use := func(kind, ns, name, field string) []secretUse {
		return []secretUse{{owner: config.Ref{Kind: kind, Namespace: ns, Name: name}, field: field}}
	}
	want := map[string][]secretUse{
		"a/s1":       use(config.KindTLSContext, "a", "c1", "spec.secret"),
		"other/ca":   use(config.KindTLSContext, "a", "c1", "spec.ca_secret"),
		"a/with.dot": use(config.KindTLSContext, "a", "c2", "spec.secret"),
		"b/hs":       use(config.KindHost, "b", "h", "spec.tlsSecret"),
		"b/hca":      use(config.KindHost, "b", "h", "spec.tls.ca_secret"),
		"c/x":        use(config.KindHost, "b", "h2", "spec.tlsSecret"),
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}
