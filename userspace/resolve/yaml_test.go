package resolve

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/tcpmap/tcpmap/userspace/config"
	"github.com/tcpmap/tcpmap/userspace/tlsconfig/tlstest"
)

// secretYAML is a kubernetes.io/tls Secret holding p, in stringData.
func secretYAML(name string, p tlstest.Pair) string {
	indent := func(b []byte) string {
		return "    " + strings.ReplaceAll(strings.TrimSpace(string(b)), "\n", "\n    ")
	}
	return fmt.Sprintf(`---
apiVersion: v1
kind: Secret
metadata:
  name: %s
type: kubernetes.io/tls
stringData:
  tls.crt: |
%s
  tls.key: |
%s
`, name, indent(p.CertPEM), indent(p.KeyPEM))
}

// TestDocsExamples loads the YAML examples of the TCPMapping reference
// (aes-tcpmapping.md) through the config loader and checks that they
// resolve to what the docs describe.
func TestDocsExamples(t *testing.T) {
	ca := tlstest.NewCA(t, "docs-ca")
	super := ca.Server(t, "my-host-1", "my-host-2")
	other := ca.Client(t, "origination")
	tests := []struct {
		name  string
		yaml  string
		want  []string
		check func(t *testing.T, rs []config.Resource)
	}{
		{
			name: "neither terminating nor originating",
			yaml: `---
apiVersion: getambassador.io/v3alpha1
kind: TCPMapping
metadata:
  name:  ssh
spec:
  port: 2222
  service: upstream:22
---
apiVersion: getambassador.io/v3alpha1
kind: TCPMapping
metadata:
  name:  cockroach
spec:
  port: 26257
  service: cockroach:26257
`,
			want: []string{
				"*:2222/TCP - default/ssh 100 -> upstream:22",
				"*:26257/TCP - default/cockroach 100 -> cockroach:26257",
			},
		},
		{
			name: "terminating TLS, but not originating it",
			yaml: `---
apiVersion: getambassador.io/v3alpha1
kind:  TLSContext
metadata:
  name:  my-context
spec:
  hosts:
  - my-host-1
  - my-host-2
  secret: supersecret
---
apiVersion: getambassador.io/v3alpha1
kind: TCPMapping
metadata:
  name:  my-host-1
spec:
  port: 2222
  host: my-host-1
  service: upstream-host-1:9999
---
apiVersion: getambassador.io/v3alpha1
kind: TCPMapping
metadata:
  name:  my-host-2
spec:
  port: 2222
  host: my-host-2
  service: upstream-host-2:9999
` + secretYAML("supersecret", super),
			want: []string{
				"*:2222/TLS my-host-1 default/my-host-1 100 -> upstream-host-1:9999",
				"*:2222/TLS my-host-2 default/my-host-2 100 -> upstream-host-2:9999",
			},
		},
		{
			name: "both terminating and originating",
			yaml: `---
apiVersion: getambassador.io/v3alpha1
kind:  TLSContext
metadata:
  name:  my-context
spec:
  hosts:
  - my-host-1
  - my-host-2
  secret: supersecret
---
apiVersion: getambassador.io/v3alpha1
kind:  TLSContext
metadata:
  name:  origination-context
spec:
  secret: othersecret
---
apiVersion: getambassador.io/v3alpha1
kind: TCPMapping
metadata:
  name:  test-1
spec:
  port: 2222
  host: my-host-1
  service: https://upstream-host-1:9999
---
apiVersion: getambassador.io/v3alpha1
kind: TCPMapping
metadata:
  name:  test-2
spec:
  port: 2222
  host: my-host-2
  tls: origination-context
  service: https://upstream-host-2:9999
` + secretYAML("supersecret", super) + secretYAML("othersecret", other),
			want: []string{
				"*:2222/TLS my-host-1 default/test-1 100 -> upstream-host-1:9999+tls",
				"*:2222/TLS my-host-2 default/test-2 100 -> upstream-host-2:9999+tls",
			},
		},
		{
			name: "originating TLS, but not terminating it",
			yaml: `---
apiVersion: getambassador.io/v3alpha1
kind:  TLSContext
metadata:
  name:  origination-context
spec:
  secret: othersecret
---
apiVersion: getambassador.io/v3alpha1
kind: TCPMapping
metadata:
  name:  test
spec:
  port: 2222
  service: https://upstream-host:9999
` + secretYAML("othersecret", other),
			want: []string{"*:2222/TCP - default/test 100 -> upstream-host:9999+tls"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs, loadProblems := config.LoadBytes("docs.yaml", []byte(tt.yaml), config.Origin{Source: "file"})
			checkProblems(t, loadProblems, nil)
			s, probs := Resolve(rs, Options{})
			checkProblems(t, probs, nil)
			checkSummary(t, s, tt.want)
		})
	}

	// In the origination example, test-1 offers no client certificate and
	// test-2 offers the one from origination-context.
	rs, _ := config.LoadBytes("docs.yaml", []byte(tests[2].yaml), config.Origin{Source: "file"})
	s, _ := Resolve(rs, Options{})
	if o := backend(t, s, "default/test-1").Origination; o == nil || o.CertPEM != nil || o.ServerName != "upstream-host-1" {
		t.Errorf("test-1 origination = %+v, want no certificate and SNI upstream-host-1", o)
	}
	if o := backend(t, s, "default/test-2").Origination; o == nil || !bytes.Equal(o.CertPEM, other.CertPEM) {
		t.Errorf("test-2 origination does not offer othersecret's certificate")
	}
}

// TestYAMLProblemsNameTheLine checks that problems carry the loader's
// origin (file and line) through resolution.
func TestYAMLProblemsNameTheLine(t *testing.T) {
	yaml := `---
apiVersion: getambassador.io/v3alpha1
kind: TCPMapping
metadata:
  name: a
spec:
  port: 2222
  service: a:1
  idle_timeout_ms: "1000"
---
apiVersion: getambassador.io/v3alpha1
kind: TCPMapping
metadata:
  name: b
spec:
  port: 2222
  service: b:1
  idle_timeout_ms: 2000
`
	rs, loadProblems := config.LoadBytes("canary.yaml", []byte(yaml), config.Origin{Source: "file"})
	checkProblems(t, loadProblems, nil)
	s, probs := Resolve(rs, Options{})
	checkSummary(t, s, []string{"*:2222/TCP - default/a 100 -> a:1"})
	checkProblems(t, probs, []string{
		"TCPMapping default/b: spec.idle_timeout_ms: cannot join canary group of TCPMapping default/a: mismatched idle_timeout_ms: 1000 != 2000 (canary.yaml:",
	})
	if len(probs) == 1 && probs[0].Origin.Line == 0 {
		t.Errorf("problem has no line: %+v", probs[0].Origin)
	}
}
