package config

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"strings"
	"time"
)

// Secret types tcpmap reads.
const (
	SecretTypeTLS    = "kubernetes.io/tls"
	SecretTypeOpaque = "Opaque"
)

// Keys of a TLS Secret.
const (
	SecretKeyCert = "tls.crt"
	SecretKeyKey  = "tls.key"
	SecretKeyCA   = "ca.crt"
)

// Which Secrets load, and the CA-only choice:
//
//   - kubernetes.io/tls: tls.crt and tls.key are both required, as the
//     Kubernetes API server requires them; ca.crt is optional.
//   - Opaque (or no type): read, as Emissary does, when it holds tls.crt or
//     ca.crt; skipped with a warning otherwise. tls.key is optional here: an
//     Opaque Secret without it is CA-only (SecretData.Key is empty,
//     CAOnly() is true), fit only for a TLSContext's ca_secret, whose
//     tls.crt Emissary reads as the CA bundle. Whether a CA-only Secret is
//     used where a key is needed is for the resolve package to report.
//   - any other type: skipped with a warning.
//
// Every PEM value is parsed here so that a broken certificate is reported
// at load time with its Secret and key, not at the first handshake.

// CAOnly reports whether the Secret holds no private key: it can verify
// peers (ca_secret) but cannot serve or present a certificate.
func (s *SecretData) CAOnly() bool { return len(s.Key) == 0 }

func secretTypeUsed(typ string) bool {
	return typ == "" || typ == SecretTypeOpaque || typ == SecretTypeTLS
}

// secretHasTLSKeys reports whether a Secret document holds tls.crt or
// ca.crt in data or stringData (a kubernetes.io/tls Secret always counts:
// missing keys are its errors).
func secretHasTLSKeys(obj map[string]any) bool {
	if typ, _ := obj["type"].(string); typ == SecretTypeTLS {
		return true
	}
	for _, f := range []string{"data", "stringData"} {
		m, _ := obj[f].(map[string]any)
		if _, ok := m[SecretKeyCert]; ok {
			return true
		}
		if _, ok := m[SecretKeyCA]; ok {
			return true
		}
		if _, ok := m[SecretKeyKey]; ok {
			return true // reported as "tls.key without tls.crt"
		}
	}
	return false
}

// secretValue is one decoded Secret key and the field it came from.
type secretValue struct {
	data  []byte
	field string
}

// secretData decodes and checks a Secret; nil when it has errors.
func secretData(d *docCtx, o *secretObject) *SecretData {
	typ := o.Type
	if typ == "" {
		typ = SecretTypeOpaque
	}
	vals := make(map[string]secretValue)
	for _, k := range []string{SecretKeyCert, SecretKeyKey, SecretKeyCA} {
		if s, ok := o.StringData[k]; ok { // stringData wins, as in Kubernetes
			vals[k] = secretValue{data: []byte(s), field: childPath("stringData", k)}
			continue
		}
		s, ok := o.Data[k]
		if !ok {
			continue
		}
		field := childPath("data", k)
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			d.errorf(field, "not valid base64 (data values are base64; use stringData for plain PEM): %v", err)
			continue
		}
		vals[k] = secretValue{data: b, field: field}
	}
	errs := d.errors

	cert, hasCert := vals[SecretKeyCert]
	key, hasKey := vals[SecretKeyKey]
	ca, hasCA := vals[SecretKeyCA]
	switch {
	case typ == SecretTypeTLS && !hasCert:
		d.errorf(childPath("data", SecretKeyCert), "required in a %s Secret", SecretTypeTLS)
	case typ == SecretTypeTLS && !hasKey:
		d.errorf(childPath("data", SecretKeyKey), "required in a %s Secret", SecretTypeTLS)
	case hasKey && !hasCert:
		d.errorf(childPath("data", SecretKeyCert), "required when tls.key is given")
	}

	var leaf *x509.Certificate
	if hasCert {
		certs, err := parseCertificates(cert.data)
		if err != nil {
			d.errorf(cert.field, "%v", err)
		} else {
			leaf = certs[0]
		}
	}
	keyOK := false
	if hasKey {
		if err := checkPrivateKey(key.data); err != nil {
			d.errorf(key.field, "%v", err)
		} else {
			keyOK = true
		}
	}
	if leaf != nil && keyOK {
		if _, err := tls.X509KeyPair(cert.data, key.data); err != nil {
			if strings.Contains(err.Error(), "does not match") {
				d.errorf(key.field, "private key does not match certificate %q", leaf.Subject.CommonName)
			} else {
				d.errorf(key.field, "certificate and private key do not form a pair: %v", err)
			}
		}
	}
	if hasCA {
		if _, err := parseCertificates(ca.data); err != nil {
			d.errorf(ca.field, "%v", err)
		}
	}
	if leaf != nil {
		now := time.Now()
		switch {
		case now.After(leaf.NotAfter):
			d.warnf(cert.field, "certificate %q expired at %s", leaf.Subject.CommonName, leaf.NotAfter.UTC().Format(time.RFC3339))
		case now.Before(leaf.NotBefore):
			d.warnf(cert.field, "certificate %q is not valid before %s", leaf.Subject.CommonName, leaf.NotBefore.UTC().Format(time.RFC3339))
		}
	}
	if d.errors > errs {
		return nil
	}
	return &SecretData{Type: typ, Cert: cert.data, Key: key.data, CA: ca.data}
}

// parseCertificates parses every CERTIFICATE block of a PEM bundle and
// requires at least one.
func parseCertificates(b []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	var others []string
	rest := b
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			others = append(others, block.Type)
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d does not parse: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	switch {
	case len(certs) > 0:
		return certs, nil
	case len(others) > 0:
		return nil, fmt.Errorf("not a PEM certificate: holds %s but no CERTIFICATE block", strings.Join(others, ", "))
	}
	return nil, fmt.Errorf("not a PEM certificate")
}

// checkPrivateKey parses the first private key block, in the formats
// crypto/tls reads: PKCS #1, SEC 1 (EC) and PKCS #8.
func checkPrivateKey(b []byte) error {
	var others []string
	rest := b
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type == "ENCRYPTED PRIVATE KEY" || block.Headers["Proc-Type"] == "4,ENCRYPTED" {
			return fmt.Errorf("private key is encrypted; tcpmap needs it unencrypted")
		}
		if !strings.HasSuffix(block.Type, "PRIVATE KEY") {
			others = append(others, block.Type)
			continue
		}
		if _, err := x509.ParsePKCS8PrivateKey(block.Bytes); err == nil {
			return nil
		}
		if _, err := x509.ParsePKCS1PrivateKey(block.Bytes); err == nil {
			return nil
		}
		if _, err := x509.ParseECPrivateKey(block.Bytes); err == nil {
			return nil
		}
		return fmt.Errorf("private key (%s) does not parse as PKCS #1, PKCS #8 or EC", block.Type)
	}
	if len(others) > 0 {
		return fmt.Errorf("not a PEM private key: holds %s but no PRIVATE KEY block", strings.Join(others, ", "))
	}
	return fmt.Errorf("not a PEM private key")
}
