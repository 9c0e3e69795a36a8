package config

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"strings"
	"testing"
	"time"
)

// testPair makes a self-signed ECDSA certificate and its key, in PEM.
func testPair(t *testing.T, cn string, notBefore, notAfter time.Time) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: cn},
		DNSNames:              []string{cn},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
}

func validPair(t *testing.T) ([]byte, []byte) {
	return testPair(t, "example.com", time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour))
}

func testCA(t *testing.T) []byte {
	c, _ := validPair(t)
	return c
}

// secretYAML writes a Secret with base64 data and plain stringData.
func secretYAML(typ string, data, stringData map[string][]byte) string {
	var b strings.Builder
	b.WriteString("apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\n  namespace: certs\n")
	if typ != "" {
		fmt.Fprintf(&b, "type: %s\n", typ)
	}
	for _, sec := range []struct {
		name string
		m    map[string][]byte
		b64  bool
	}{{"data", data, true}, {"stringData", stringData, false}} {
		if len(sec.m) == 0 {
			continue
		}
		fmt.Fprintf(&b, "%s:\n", sec.name)
		for _, k := range []string{"ca.crt", "tls.crt", "tls.key", "other"} {
			v, ok := sec.m[k]
			if !ok {
				continue
			}
			if sec.b64 {
				fmt.Fprintf(&b, "  %s: %s\n", k, base64.StdEncoding.EncodeToString(v))
				continue
			}
			fmt.Fprintf(&b, "  %s: |\n", k)
			for _, line := range strings.Split(strings.TrimRight(string(v), "\n"), "\n") {
				fmt.Fprintf(&b, "    %s\n", line)
			}
		}
	}
	return b.String()
}

func TestSecretLoads(t *testing.T) {
	cert, key := validPair(t)
	ca := testCA(t)
	tests := []struct {
		name                 string
		in                   string
		wantCert, wantKey    []byte
		wantCA               []byte
		wantType             string
		wantCAOnly, wantWarn bool
	}{
		{"data", secretYAML(SecretTypeTLS, map[string][]byte{"tls.crt": cert, "tls.key": key}, nil), cert, key, nil, SecretTypeTLS, false, false},
		{"stringData", secretYAML(SecretTypeTLS, nil, map[string][]byte{"tls.crt": cert, "tls.key": key, "ca.crt": ca}), cert, key, ca, SecretTypeTLS, false, false},
		{"stringData wins", secretYAML(SecretTypeTLS, map[string][]byte{"tls.crt": []byte("garbage"), "tls.key": key}, map[string][]byte{"tls.crt": cert}), cert, key, nil, SecretTypeTLS, false, false},
		{"opaque pair", secretYAML(SecretTypeOpaque, map[string][]byte{"tls.crt": cert, "tls.key": key, "other": []byte("x")}, nil), cert, key, nil, SecretTypeOpaque, false, false},
		{"opaque CA only", secretYAML("", map[string][]byte{"tls.crt": ca}, nil), ca, nil, nil, SecretTypeOpaque, true, false},
		{"opaque ca.crt only", secretYAML(SecretTypeOpaque, nil, map[string][]byte{"ca.crt": ca}), nil, nil, ca, SecretTypeOpaque, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs, ps := loadString(t, tt.in)
			if len(ps) != 0 || len(rs) != 1 {
				t.Fatalf("got %d resources, problems: %s", len(rs), problemStrings(ps))
			}
			s := rs[0].Secret
			if rs[0].Ref != (Ref{Kind: KindSecret, Namespace: "certs", Name: "s"}) || s == nil {
				t.Fatalf("resource = %+v", rs[0])
			}
			if !bytes.Equal(s.Cert, tt.wantCert) || !bytes.Equal(s.Key, tt.wantKey) || !bytes.Equal(s.CA, tt.wantCA) {
				t.Errorf("cert/key/ca differ: got %q %q %q", s.Cert, s.Key, s.CA)
			}
			if s.Type != tt.wantType || s.CAOnly() != tt.wantCAOnly {
				t.Errorf("type = %q, CAOnly = %v", s.Type, s.CAOnly())
			}
		})
	}
}

func TestSecretRejects(t *testing.T) {
	cert, key := validPair(t)
	_, otherKey := validPair(t)
	rsaKeyPEM := []byte("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n")
	tests := []struct {
		name, in, field, reason string
	}{
		{"bad base64", "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: \"%%%\"\n  tls.key: " + base64.StdEncoding.EncodeToString(key) + "\n",
			`data["tls.crt"]`, "not valid base64"},
		{"cert not PEM", secretYAML(SecretTypeTLS, map[string][]byte{"tls.crt": []byte("hello"), "tls.key": key}, nil), `data["tls.crt"]`, "not a PEM certificate"},
		{"cert is a key", secretYAML(SecretTypeTLS, map[string][]byte{"tls.crt": key, "tls.key": key}, nil), `data["tls.crt"]`, "not a PEM certificate: holds PRIVATE KEY"},
		{"cert garbage DER", secretYAML(SecretTypeTLS, nil, map[string][]byte{"tls.crt": []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), "tls.key": key}),
			`stringData["tls.crt"]`, "certificate 1 does not parse"},
		{"key not PEM", secretYAML(SecretTypeTLS, map[string][]byte{"tls.crt": cert, "tls.key": []byte("hello")}, nil), `data["tls.key"]`, "not a PEM private key"},
		{"key garbage", secretYAML(SecretTypeTLS, map[string][]byte{"tls.crt": cert, "tls.key": rsaKeyPEM}, nil), `data["tls.key"]`, "does not parse"},
		{"key encrypted", secretYAML(SecretTypeTLS, map[string][]byte{"tls.crt": cert, "tls.key": []byte("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n")}, nil), `data["tls.key"]`, "encrypted"},
		{"key mismatch", secretYAML(SecretTypeTLS, map[string][]byte{"tls.crt": cert, "tls.key": otherKey}, nil), `data["tls.key"]`, "private key does not match certificate"},
		{"key missing", secretYAML(SecretTypeTLS, map[string][]byte{"tls.crt": cert}, nil), `data["tls.key"]`, "required in a kubernetes.io/tls Secret"},
		{"cert missing", secretYAML(SecretTypeTLS, map[string][]byte{"tls.key": key}, nil), `data["tls.crt"]`, "required in a kubernetes.io/tls Secret"},
		{"opaque key without cert", secretYAML(SecretTypeOpaque, map[string][]byte{"tls.key": key}, nil), `data["tls.crt"]`, "required when tls.key is given"},
		{"bad ca", secretYAML(SecretTypeTLS, map[string][]byte{"tls.crt": cert, "tls.key": key, "ca.crt": []byte("nope")}, nil), `data["ca.crt"]`, "not a PEM certificate"},
		{"data not strings", "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: 5\n", `data["tls.crt"]`, "must be a string"},
		{"unknown top-level", secretYAML(SecretTypeTLS, map[string][]byte{"tls.crt": cert, "tls.key": key}, nil) + "spec: {}\n", "spec", "unknown field"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs, ps := loadString(t, tt.in)
			if len(rs) != 0 {
				t.Errorf("secret kept")
			}
			for _, p := range ps {
				if p.Field == tt.field && !p.IsWarning() {
					if !strings.Contains(p.Reason, tt.reason) {
						t.Errorf("reason = %q, want %q", p.Reason, tt.reason)
					}
					if p.Ref != (Ref{Kind: KindSecret, Namespace: p.Ref.Namespace, Name: "s"}) || p.Origin.Line == 0 {
						t.Errorf("problem = %+v", p)
					}
					return
				}
			}
			t.Errorf("no error on %s: %s", tt.field, problemStrings(ps))
		})
	}
}

func TestSecretSkipped(t *testing.T) {
	tests := []struct{ name, in, reason string }{
		{"other type", "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ntype: kubernetes.io/dockerconfigjson\ndata: {.dockerconfigjson: e30=}\n", "kubernetes.io/dockerconfigjson is not used"},
		{"opaque without tls keys", "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {password: cGFzcw==}\n", "neither tls.crt nor ca.crt"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs, ps := loadString(t, tt.in)
			if len(rs) != 0 || len(ps) != 1 || !ps[0].IsWarning() || !strings.Contains(ps[0].Reason, tt.reason) {
				t.Errorf("got %q, %s", names(rs), problemStrings(ps))
			}
		})
	}
}

func TestSecretExpiredWarns(t *testing.T) {
	cert, key := testPair(t, "old.example.com", time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC))
	rs, ps := loadString(t, secretYAML(SecretTypeTLS, map[string][]byte{"tls.crt": cert, "tls.key": key}, nil))
	if len(rs) != 1 {
		t.Errorf("an expired certificate is a warning, not an error: %s", problemStrings(ps))
	}
	if len(ps) != 1 || !ps[0].IsWarning() || ps[0].Field != `data["tls.crt"]` || !strings.Contains(ps[0].Reason, "expired at 2001-01-01T00:00:00Z") {
		t.Errorf("problems: %s", problemStrings(ps))
	}
}
