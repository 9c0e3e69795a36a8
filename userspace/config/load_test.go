package config

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// loadString loads one in-memory stream named test.yaml.
func loadString(t *testing.T, y string) ([]Resource, []Problem) {
	t.Helper()
	return LoadBytes("test.yaml", []byte(y), Origin{Source: "file"})
}

func findResource(rs []Resource, kind, name string) *Resource {
	for i := range rs {
		if rs[i].Ref.Kind == kind && rs[i].Ref.Name == name {
			return &rs[i]
		}
	}
	return nil
}

func errorsOnly(ps []Problem) []Problem {
	var out []Problem
	for _, p := range ps {
		if !p.IsWarning() {
			out = append(out, p)
		}
	}
	return out
}

func names(rs []Resource) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Ref.Kind+" "+r.Ref.Namespace+"/"+r.Ref.Name)
	}
	return out
}

func problemStrings(ps []Problem) string {
	var b strings.Builder
	for _, p := range ps {
		fmt.Fprintf(&b, "\n  [%s] %s", p.Level, p.Error())
	}
	return b.String()
}

// TestDocExamples: every YAML example of the reference docs loads with no
// problem at all, each file on its own (they reuse names between them).
func TestDocExamples(t *testing.T) {
	files, err := filepath.Glob("testdata/docs/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no fixtures: %v", err)
	}
	want := map[string][]string{
		"aes-ssh.yaml":       {"TCPMapping default/ssh"},
		"aes-cockroach.yaml": {"TCPMapping default/cockroach"},
		"aes-terminate.yaml": {"TLSContext default/my-context", "TCPMapping default/my-host-1", "TCPMapping default/my-host-2"},
		"aes-terminate-originate.yaml": {"TLSContext default/my-context", "TLSContext default/origination-context",
			"TCPMapping default/test-1", "TCPMapping default/test-2"},
		"aes-originate.yaml":                  {"TLSContext default/origination-context", "TCPMapping default/test"},
		"emissary22-ssh.yaml":                 {"TCPMapping default/ssh"},
		"emissary22-cockroach.yaml":           {"TCPMapping default/cockroach"},
		"emissary22-terminate.yaml":           {"TLSContext default/my-context", "TCPMapping default/my-host-1", "TCPMapping default/my-host-2"},
		"emissary22-originate.yaml":           {"TCPMapping default/test"},
		"emissary22-attributes.yaml":          {"TCPMapping ambassador/everything"},
		"emissary-tls-origination.yaml":       {"TLSContext default/tls-context"},
		"emissary33-aws-proxy-protocol.yaml":  {"Module default/ambassador"},
		"emissary22-terminate-originate.yaml": {"TLSContext default/my-context", "TLSContext default/origination-context", "TCPMapping default/test-1", "TCPMapping default/test-2"},
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			rs, ps := Load([]string{f})
			if len(ps) != 0 {
				t.Fatalf("problems: %s", problemStrings(ps))
			}
			got, w := names(rs), want[filepath.Base(f)]
			if w == nil {
				t.Fatalf("fixture %s has no expectation; add it to the table", f)
			}
			if !reflect.DeepEqual(got, w) {
				t.Errorf("resources = %q, want %q", got, w)
			}
			for _, r := range rs {
				if r.Origin.File != f || r.Origin.Line == 0 || r.Origin.Source != "file" {
					t.Errorf("%s: origin = %+v, want file %s and a line", r.Ref, r.Origin, f)
				}
			}
		})
	}
}

func TestDocExampleValues(t *testing.T) {
	rs, ps := Load([]string{"testdata/docs/emissary22-attributes.yaml"})
	if len(ps) != 0 || len(rs) != 1 {
		t.Fatalf("got %d resources, problems: %s", len(rs), problemStrings(ps))
	}
	m := rs[0].TCPMapping
	one, thirty := 1, 30
	yes, no := true, false
	want := &TCPMappingSpec{
		AmbassadorID:  AmbassadorID{"default"},
		Port:          IntOrString{Value: 8443, Set: true},
		Host:          "*.example.com",
		Address:       "127.0.0.1",
		Service:       "https://servicename.othernamespace:443",
		EnableIPv4:    &yes,
		EnableIPv6:    &no,
		IdleTimeoutMs: IntOrString{Value: 300000, Set: true},
		CircuitBreakers: []CircuitBreaker{{
			Priority: "default", MaxConnections: &one, MaxPendingRequests: &one,
			MaxRequests: ptr(1024), MaxRetries: ptr(3),
		}},
		Resolver:   "kubernetes-service",
		TLS:        &TLSRef{Context: "origination-context", Originate: true},
		Weight:     &thirty,
		ClusterTag: "everything",
		StatsName:  "everything",
	}
	if !reflect.DeepEqual(m, want) {
		t.Errorf("spec =\n%+v\nwant\n%+v", m, want)
	}
	if got := rs[0].Ref; got != (Ref{Kind: KindTCPMapping, Namespace: "ambassador", Name: "everything"}) {
		t.Errorf("ref = %v", got)
	}
	if rs[0].Origin.Line != 5 { // the apiVersion line after the comments and ---
		t.Errorf("origin line = %d, want 5", rs[0].Origin.Line)
	}
}

func ptr[T any](v T) *T { return &v }

func TestMalformedYAMLReportsFileAndLine(t *testing.T) {
	f := "testdata/malformed.yaml"
	rs, ps := Load([]string{f})
	if len(rs) != 0 {
		t.Errorf("resources = %q, want none", names(rs))
	}
	if len(ps) != 1 {
		t.Fatalf("problems: %s", problemStrings(ps))
	}
	p := ps[0]
	if p.Origin.File != f || p.Origin.Line != 6 || p.IsWarning() {
		t.Errorf("problem = %+v, want an error at %s:6", p, f)
	}
	if !strings.Contains(p.Reason, "YAML does not parse") || !strings.Contains(p.Error(), f+":") {
		t.Errorf("message = %q", p.Error())
	}
}

func TestMultiDocumentWithBadMiddle(t *testing.T) {
	f := "testdata/multidoc-bad.yaml"
	rs, ps := Load([]string{f})
	if got, want := names(rs), []string{"TCPMapping default/first", "TCPMapping default/third"}; !reflect.DeepEqual(got, want) {
		t.Errorf("resources = %q, want %q", got, want)
	}
	if len(ps) != 1 {
		t.Fatalf("problems: %s", problemStrings(ps))
	}
	// Document 2 starts at line 8; its bad line is 15.
	if p := ps[0]; p.Origin.File != f || p.Origin.Line != 15 {
		t.Errorf("problem at %s, want %s:15: %s", p.Origin, f, p.Error())
	}
	if third := findResource(rs, KindTCPMapping, "third"); third == nil || third.Origin.Line != 17 {
		t.Errorf("third = %+v, want origin line 17", third)
	}
}

func TestKubectlOutputLoads(t *testing.T) {
	rs, ps := Load([]string{"testdata/kubectl-get.yaml", "testdata/kubectl-list.yaml"})
	if len(ps) != 0 {
		t.Fatalf("problems: %s", problemStrings(ps))
	}
	want := []string{"TCPMapping default/ssh", "TCPMapping edge/ssh", "TLSContext edge/origination-context"}
	if got := names(rs); !reflect.DeepEqual(got, want) {
		t.Errorf("resources = %q, want %q", got, want)
	}
	if got := rs[0].Meta.Labels["app.kubernetes.io/name"]; got != "ssh" {
		t.Errorf("label = %q", got)
	}
	if got := rs[2].Origin.Line; got != 14 {
		t.Errorf("list item origin line = %d, want 14", got)
	}
}

func TestV2Resources(t *testing.T) {
	rs, ps := Load([]string{"testdata/v2.yaml"})
	if len(ps) != 0 {
		t.Fatalf("problems: %s", problemStrings(ps))
	}
	legacy := findResource(rs, KindTCPMapping, "legacy-tls")
	if legacy == nil || legacy.APIVersion != APIVersionV2 {
		t.Fatalf("legacy-tls missing: %q", names(rs))
	}
	if got, want := *legacy.TCPMapping.TLS, (TLSRef{Originate: true}); got != want {
		t.Errorf("tls = %+v, want %+v", got, want)
	}
	ctx := findResource(rs, KindTCPMapping, "legacy-context")
	if got, want := *ctx.TCPMapping.TLS, (TLSRef{Context: "origination-context", Originate: true}); got != want {
		t.Errorf("tls = %+v, want %+v", got, want)
	}
	if got := ctx.TCPMapping.IdleTimeoutMs; got != (IntOrString{Value: 300, Set: true}) {
		t.Errorf("idle_timeout_ms = %+v", got)
	}
	if h := findResource(rs, KindHost, "example"); h == nil || h.Host.TLSSecret.Name != "example-cert" {
		t.Errorf("host = %+v", h)
	}
}

func TestIdleTimeoutNumberOrString(t *testing.T) {
	for _, v := range []string{`300`, `"300"`, `'300'`} {
		rs, ps := loadString(t, res(KindTCPMapping, "  port: 2222\n  service: up:22\n  idle_timeout_ms: "+v+"\n"))
		if len(ps) != 0 || len(rs) != 1 {
			t.Fatalf("%s: problems: %s", v, problemStrings(ps))
		}
		if got := rs[0].TCPMapping.IdleTimeoutMs; got != (IntOrString{Value: 300, Set: true}) {
			t.Errorf("%s: idle_timeout_ms = %+v", v, got)
		}
	}
}

func TestOtherKinds(t *testing.T) {
	rs, ps := Load([]string{"testdata/mixed.yaml"})
	if got, want := names(rs), []string{"TCPMapping default/ssh"}; !reflect.DeepEqual(got, want) {
		t.Errorf("resources = %q, want %q", got, want)
	}
	// Deployment and Mapping are reported as warnings; the v1 Service is not.
	type w struct{ kind, reason string }
	var got []w
	for _, p := range ps {
		if !p.IsWarning() {
			t.Errorf("unexpected error: %s", p.Error())
		}
		got = append(got, w{p.Ref.Kind, p.Reason})
	}
	want := []w{
		{"Deployment", "apps/v1 Deployment is not used by tcpmap; skipped"},
		{"Mapping", "getambassador.io/v3alpha1 Mapping is not used by tcpmap; skipped"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("warnings = %+v, want %+v", got, want)
	}
}

func TestListenerAndHost(t *testing.T) {
	rs, ps := Load([]string{"testdata/listener-host.yaml"})
	if len(ps) != 0 {
		t.Fatalf("problems: %s", problemStrings(ps))
	}
	l := findResource(rs, KindListener, "tls-2222")
	if got, want := l.Listener.Stack(), []string{"TLS", "TCP"}; !reflect.DeepEqual(got, want) {
		t.Errorf("stack = %q, want %q", got, want)
	}
	p := findResource(rs, KindListener, "proxy-tls-8443")
	if p.Listener.Port.Value != 8443 {
		t.Errorf("port = %+v", p.Listener.Port)
	}
	if got, want := p.Listener.Stack(), []string{"PROXY", "TLS", "TCP"}; !reflect.DeepEqual(got, want) {
		t.Errorf("stack = %q, want %q", got, want)
	}
	if h := findResource(rs, KindHost, "wildcard"); h.Host.Hostname != "*" {
		t.Errorf("default hostname = %q, want *", h.Host.Hostname)
	}
	if h := findResource(rs, KindHost, "by-context"); h.Host.Hostname != "*.example.com" || h.Host.TLSContext.Name != "my-context" {
		t.Errorf("host = %+v", h.Host)
	}
}

func TestListenerStack(t *testing.T) {
	for proto, want := range map[string][]string{
		"TCP":        {"TCP"},
		"TLS":        {"TLS", "TCP"},
		"HTTP":       {"HTTP", "TCP"},
		"HTTPS":      {"TLS", "HTTP", "TCP"},
		"HTTPPROXY":  {"PROXY", "HTTP", "TCP"},
		"HTTPSPROXY": {"PROXY", "TLS", "HTTP", "TCP"},
		"":           nil,
		"bogus":      nil,
	} {
		s := &ListenerSpec{Protocol: proto}
		if got := s.Stack(); !reflect.DeepEqual(got, want) {
			t.Errorf("Stack(%q) = %q, want %q", proto, got, want)
		}
	}
	s := &ListenerSpec{Protocol: "TCP", ProtocolStack: []string{"PROXY", "TCP"}}
	got := s.Stack()
	if want := []string{"PROXY", "TCP"}; !reflect.DeepEqual(got, want) {
		t.Errorf("protocolStack should win: %q", got)
	}
	got[0] = "X" // the caller's copy
	if s.ProtocolStack[0] != "PROXY" {
		t.Errorf("Stack returned the spec's own slice")
	}
}

func TestDuplicateNamesAcrossFiles(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a.yaml")
	b := filepath.Join(dir, "b.yaml")
	writeFile(t, a, res(KindTCPMapping, "  port: 1\n  service: one\n"))
	writeFile(t, b, "# comment\n"+res(KindTCPMapping, "  port: 2\n  service: two\n")+
		"---\n"+strings.Replace(res(KindTCPMapping, "  port: 3\n  service: three\n"), "name: x", "name: x\n  namespace: other", 1))
	rs, ps := Load([]string{dir})
	if len(rs) != 2 || rs[0].TCPMapping.Service != "one" || rs[1].Ref.Namespace != "other" {
		t.Errorf("resources = %q", names(rs))
	}
	if len(ps) != 1 {
		t.Fatalf("problems: %s", problemStrings(ps))
	}
	p := ps[0]
	if p.Field != "metadata.name" || p.Origin.File != b || p.Origin.Line != 5 ||
		!strings.Contains(p.Reason, "first defined at "+a+":1") {
		t.Errorf("problem = %+v", p)
	}
}

func TestLoadDirectory(t *testing.T) {
	dir := t.TempDir()
	tcp := func(name string, port int) string {
		return strings.Replace(res(KindTCPMapping, fmt.Sprintf("  port: %d\n  service: up\n", port)), "name: x", "name: "+name, 1)
	}
	writeFile(t, filepath.Join(dir, "b.yaml"), tcp("b", 2))
	writeFile(t, filepath.Join(dir, "a.yml"), tcp("a", 1))
	writeFile(t, filepath.Join(dir, "c.json"), `{"apiVersion": "getambassador.io/v3alpha1", "kind": "TCPMapping",
	"metadata": {"name": "c"}, "spec": {"port": 3, "service": "up"}}`)
	writeFile(t, filepath.Join(dir, "sub", "d.yaml"), tcp("d", 4))
	writeFile(t, filepath.Join(dir, "notes.txt"), "not: [config")
	writeFile(t, filepath.Join(dir, ".hidden.yaml"), "not: [config")
	writeFile(t, filepath.Join(dir, ".git", "e.yaml"), "not: [config")
	// A ConfigMap volume: visible names link through the hidden ..data.
	writeFile(t, filepath.Join(dir, "cm", "..2024_01_01", "e.yaml"), tcp("e", 5))
	mustSymlink(t, "..2024_01_01", filepath.Join(dir, "cm", "..data"))
	mustSymlink(t, filepath.Join("..data", "e.yaml"), filepath.Join(dir, "cm", "e.yaml"))
	// A loop must not hang.
	mustSymlink(t, "..", filepath.Join(dir, "sub", "loop"))

	rs, ps := Load([]string{dir, filepath.Join(dir, "a.yml")}) // a.yml twice: read once
	if len(ps) != 0 {
		t.Fatalf("problems: %s", problemStrings(ps))
	}
	got := names(rs)
	want := []string{"TCPMapping default/a", "TCPMapping default/b", "TCPMapping default/c",
		"TCPMapping default/e", "TCPMapping default/d"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("resources = %q, want %q", got, want)
	}
	if c := findResource(rs, KindTCPMapping, "c"); c.Origin.Line != 1 {
		t.Errorf("json origin = %+v", c.Origin)
	}
}

func TestLoadMissingPath(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope.yaml")
	rs, ps := Load([]string{missing})
	if len(rs) != 0 || len(ps) != 1 || ps[0].Origin.File != missing || !strings.Contains(ps[0].Reason, "no such file") {
		t.Errorf("got %q, %s", names(rs), problemStrings(ps))
	}
}

func TestLoadBytesOrigin(t *testing.T) {
	rs, ps := LoadBytes("request", []byte("---\n"+res(KindTCPMapping, "  port: 1\n  service: s\n")), Origin{Source: "api"})
	if len(ps) != 0 || len(rs) != 1 {
		t.Fatalf("problems: %s", problemStrings(ps))
	}
	if got, want := rs[0].Origin, (Origin{Source: "api", File: "request", Line: 2}); got != want {
		t.Errorf("origin = %+v, want %+v", got, want)
	}
}

func TestEmptyAndOddDocuments(t *testing.T) {
	tests := []struct {
		name   string
		in     string
		errors int
	}{
		{"empty", "", 0},
		{"comments and markers", "# nothing\n---\n---\n...\n", 0},
		{"null document", "~\n", 0},
		{"scalar document", "hello\n", 1},
		{"list of resources", "- " + strings.ReplaceAll(res(KindTCPMapping, "  port: 1\n  service: s\n"), "\n", "\n  "), 0},
		{"no kind", "apiVersion: v9\nmetadata: {name: x}\n", 1},
		{"no apiVersion", "kind: TCPMapping\nmetadata: {name: x}\n", 1},
		{"non-string key", res(KindTCPMapping, "  port: 1\n  service: s\n  [a]: 1\n"), 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, ps := loadString(t, tt.in)
			if got := len(errorsOnly(ps)); got != tt.errors {
				t.Errorf("errors = %d, want %d: %s", got, tt.errors, problemStrings(ps))
			}
		})
	}
}

func TestAnchorsAndMergeKeys(t *testing.T) {
	in := `apiVersion: getambassador.io/v3alpha1
kind: TCPMapping
metadata:
  name: merged
spec:
  <<: &base
    service: up:22
    port: 1
  port: 2222
  circuit_breakers:
  - &cb {max_connections: 5}
  - *cb
`
	rs, ps := loadString(t, in)
	if len(ps) != 0 || len(rs) != 1 {
		t.Fatalf("problems: %s", problemStrings(ps))
	}
	m := rs[0].TCPMapping
	if m.Port.Value != 2222 || m.Service != "up:22" || len(m.CircuitBreakers) != 2 || *m.CircuitBreakers[1].MaxConnections != 5 {
		t.Errorf("spec = %+v", m)
	}
}

func TestAliasBomb(t *testing.T) {
	var b strings.Builder
	b.WriteString("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n")
	for i := 1; i < 9; i++ {
		fmt.Fprintf(&b, "a%d: &a%d [*a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d]\n", i, i, i-1, i-1, i-1, i-1, i-1, i-1, i-1, i-1, i-1, i-1)
	}
	_, ps := loadString(t, b.String())
	if len(ps) != 1 || !strings.Contains(ps[0].Reason, "too large") {
		t.Errorf("problems: %s", problemStrings(ps))
	}
}

func TestFilterByAmbassadorID(t *testing.T) {
	in := strings.Join([]string{
		strings.Replace(res(KindTCPMapping, "  port: 1\n  service: s\n"), "name: x", "name: plain", 1),
		strings.Replace(res(KindTCPMapping, "  ambassador_id: [edge, other]\n  port: 2\n  service: s\n"), "name: x", "name: edge", 1),
		strings.Replace(res(KindTCPMapping, "  ambassador_id: default\n  port: 3\n  service: s\n"), "name: x", "name: default", 1),
		strings.Replace(res(KindTCPMapping, "  ambassador_id: _automatic_\n  port: 4\n  service: s\n"), "name: x", "name: auto", 1),
		"apiVersion: v1\nkind: Secret\nmetadata: {name: ca}\ntype: Opaque\nstringData: {ca.crt: \"" + strings.ReplaceAll(string(testCA(t)), "\n", `\n`) + "\"}\n",
	}, "---\n")
	rs, ps := loadString(t, in)
	if len(ps) != 0 {
		t.Fatalf("problems: %s", problemStrings(ps))
	}
	for id, want := range map[string][]string{
		"default": {"TCPMapping default/plain", "TCPMapping default/default", "TCPMapping default/auto", "Secret default/ca"},
		"edge":    {"TCPMapping default/edge", "TCPMapping default/auto", "Secret default/ca"},
	} {
		if got := names(FilterByAmbassadorID(rs, id)); !reflect.DeepEqual(got, want) {
			t.Errorf("FilterByAmbassadorID(%q) = %q, want %q", id, got, want)
		}
	}
}

func TestIndex(t *testing.T) {
	rs, ps := Load([]string{"testdata/docs/aes-terminate-originate.yaml"})
	if len(ps) != 0 {
		t.Fatalf("problems: %s", problemStrings(ps))
	}
	s := Index(rs)
	if r := s.Get(KindTLSContext, "default", "origination-context"); r == nil || r.TLSContext.Secret != "othersecret" {
		t.Errorf("Get = %+v", r)
	}
	if r := s.Get(KindTLSContext, "other", "origination-context"); r != nil {
		t.Errorf("Get in the wrong namespace = %+v", r)
	}
	var got []string
	for _, r := range s.Kind(KindTCPMapping) {
		got = append(got, r.Ref.Name)
	}
	if want := []string{"test-1", "test-2"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Kind = %q, want %q", got, want)
	}
}

func TestParentPath(t *testing.T) {
	for in, want := range map[string]string{
		"spec.port":                   "spec",
		"spec":                        "",
		`data["tls.crt"]`:             "data",
		"spec.circuit_breakers[0]":    "spec.circuit_breakers",
		"spec.circuit_breakers[0].x":  "spec.circuit_breakers[0]",
		`metadata.annotations["a]b"]`: "metadata.annotations",
		`x["bad`:                      "",
	} {
		if got := parentPath(in); got != want {
			t.Errorf("parentPath(%q) = %q, want %q", in, got, want)
		}
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func mustSymlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}
