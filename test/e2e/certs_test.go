package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"strings"
	"sync"
	"time"
)

// clientCN is the common name of the client certificate in Secret
// othersecret, offered by origination contexts; upstreams report it.
const clientCN = "tcpmap-e2e-client"

// ctxHostsCN is the common name of Secret tls-context-hosts, used both to
// terminate and to originate.
const ctxHostsCN = "tls-context-host-1"

// keyPair is a certificate and key in PEM, as a kubernetes.io/tls Secret
// holds them.
type keyPair struct {
	certPEM, keyPEM []byte
}

// pki is the test's certificate authority and every certificate the tests
// use, generated once per test binary.
type pki struct {
	caPEM []byte
	pool  *x509.CertPool
	// pool2 is a second, unrelated CA: only sepB verifies against it.
	pool2 *x509.CertPool

	myHosts    keyPair // my-host-1, my-host-2 (Secret supersecret)
	client     keyPair // CN clientCN, client auth (Secret othersecret)
	wildcard   keyPair // *.example.com
	hostCert   keyPair // hostcert.example.org (Host tlsSecret, other namespace)
	ctxHost2   keyPair // tls-context-host-2 (TLSContext in another namespace)
	ctxHosts   keyPair // tls-context-host-1..3, server and client auth
	sepA       keyPair // a.example.net, first CA
	sepB       keyPair // b.example.net, second CA
	upstream   tls.Certificate
	upstreamKP keyPair
}

// upstreamNames are the names the upstream TLS servers' certificate is valid
// for: every fixture host, and the SNI names the passthrough tests send.
var upstreamNames = []string{
	"upstream", "cockroach", "upstream-host-1", "upstream-host-2", "upstream-host", "tls-upstream",
	"passthrough.test", "my-funny-name", "my-hilarious-name", "my-hysterical-name",
}

var testPKI = sync.OnceValue(func() *pki {
	p, err := newPKI()
	if err != nil {
		panic(fmt.Sprintf("generate test certificates: %v", err))
	}
	return p
})

// authority is a CA that issues certificates.
type authority struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
	pool *x509.CertPool
	next int64
}

func newAuthority(cn string) (*authority, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	a := &authority{cert: cert, key: key, pool: x509.NewCertPool(), next: 2,
		pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
	a.pool.AddCert(cert)
	return a, nil
}

// issue signs a leaf certificate for cn and dns with the given usages.
func (a *authority) issue(cn string, dns []string, usage ...x509.ExtKeyUsage) (keyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return keyPair{}, err
	}
	a.next++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(a.next),
		Subject:      pkix.Name{CommonName: cn},
		DNSNames:     dns,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  usage,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, &key.PublicKey, a.key)
	if err != nil {
		return keyPair{}, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return keyPair{}, err
	}
	return keyPair{
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}),
	}, nil
}

func newPKI() (*pki, error) {
	ca, err := newAuthority("tcpmap e2e CA")
	if err != nil {
		return nil, err
	}
	ca2, err := newAuthority("tcpmap e2e second CA")
	if err != nil {
		return nil, err
	}
	p := &pki{caPEM: ca.pem, pool: ca.pool, pool2: ca2.pool}
	server, client := x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth
	var errs [9]error
	p.myHosts, errs[0] = ca.issue("my-host-1", []string{"my-host-1", "my-host-2"}, server)
	p.client, errs[1] = ca.issue(clientCN, nil, client)
	p.wildcard, errs[2] = ca.issue("*.example.com", []string{"*.example.com"}, server)
	p.hostCert, errs[3] = ca.issue("hostcert.example.org", []string{"hostcert.example.org"}, server)
	p.ctxHost2, errs[4] = ca.issue("tls-context-host-2", []string{"tls-context-host-2"}, server)
	p.upstreamKP, errs[5] = ca.issue("tcpmap e2e upstream", upstreamNames, server)
	// Emissary's TCPMappingTest terminates and originates with one
	// TLSContext, so its certificate serves both ways.
	p.ctxHosts, errs[6] = ca.issue(ctxHostsCN, []string{"tls-context-host-1", "tls-context-host-2", "tls-context-host-3"}, server, client)
	p.sepA, errs[7] = ca.issue("a.example.net", []string{"a.example.net"}, server)
	p.sepB, errs[8] = ca2.issue("b.example.net", []string{"b.example.net"}, server)
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	p.upstream, err = tls.X509KeyPair(p.upstreamKP.certPEM, p.upstreamKP.keyPEM)
	if err != nil {
		return nil, err
	}
	return p, nil
}

// secretYAML renders a kubernetes.io/tls Secret, data base64-encoded as
// `kubectl get secret -o yaml` shows it.
func secretYAML(name, namespace string, kp keyPair) string {
	return fmt.Sprintf(`---
apiVersion: v1
kind: Secret
metadata:
  name: %s
  namespace: %s
type: kubernetes.io/tls
data:
  tls.crt: %s
  tls.key: %s
`, name, namespace, base64.StdEncoding.EncodeToString(kp.certPEM), base64.StdEncoding.EncodeToString(kp.keyPEM))
}

// secretsYAML is every Secret the fixtures refer to, written into each
// config directory as secrets.yaml.
func secretsYAML() string {
	p := testPKI()
	var b strings.Builder
	b.WriteString(secretYAML("supersecret", "default", p.myHosts))
	b.WriteString(secretYAML("othersecret", "default", p.client))
	b.WriteString(secretYAML("wildcard-secret", "default", p.wildcard))
	// For the cross-namespace origination context (Emissary's
	// TCPMappingTLSOriginationContextCrossNamespaceTest).
	b.WriteString(secretYAML("othersecret", "other-namespace", p.client))
	// For the Host with a tlsSecret in another namespace and the TLSContext
	// living in another namespace.
	b.WriteString(secretYAML("hostsecret", "other-namespace", p.hostCert))
	b.WriteString(secretYAML("ctx-host-2-secret", "other-namespace", p.ctxHost2))
	b.WriteString(secretYAML("tls-context-hosts", "default", p.ctxHosts))
	b.WriteString(secretYAML("sep-a", "default", p.sepA))
	b.WriteString(secretYAML("sep-b", "default", p.sepB))
	return b.String()
}
