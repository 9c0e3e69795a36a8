package tlsconfig

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/tcpmap/tcpmap/userspace/snapshot"
)

// ServerConfig builds the crypto/tls configuration a TLS listener presents
// for one SNI route.
//
// With a client CA, client certificates are verified: required when
// CertRequired is set, else verified only if the client offers one (as
// Envoy does with a trusted CA and no require_client_certificate).
// CertRequired without a CA is an error: there would be nothing to verify
// against.
func ServerConfig(s *snapshot.TLSServer) (*tls.Config, error) {
	if s == nil {
		return nil, errors.New("no server TLS settings")
	}
	if len(s.CertPEM) == 0 || len(s.KeyPEM) == 0 {
		return nil, fmt.Errorf("%s: no server certificate and key", s.Source)
	}
	cert, err := tls.X509KeyPair(s.CertPEM, s.KeyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: server certificate: %w", s.Source, err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	applyParams(cfg, s.TLSParams)
	switch {
	case len(s.ClientCAPEM) > 0:
		pool, err := certPool(s.ClientCAPEM)
		if err != nil {
			return nil, fmt.Errorf("%s: client CA: %w", s.Source, err)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
		if s.CertRequired {
			cfg.ClientAuth = tls.RequireAndVerifyClientCert
		}
	case s.CertRequired:
		return nil, fmt.Errorf("%s: cert_required without a CA to verify client certificates", s.Source)
	}
	return cfg, nil
}

// ClientConfig builds the crypto/tls configuration used to originate TLS to
// an upstream.
//
// With RootCAPEM the upstream certificate is verified against it, and
// against ServerName when there is one. Without a ServerName (the upstream
// is an IP literal and the context sets no sni) only the chain is verified:
// there is no name to compare, and crypto/tls would otherwise refuse to
// handshake. Without RootCAPEM the upstream is not verified at all
// (InsecureSkipVerify), as Emissary does for a bare https:// service; the
// relay logs a warning for such backends.
func ClientConfig(c *snapshot.TLSClient) (*tls.Config, error) {
	if c == nil {
		return nil, errors.New("no client TLS settings")
	}
	name := "https upstream"
	if c.Context != nil {
		name = c.Context.String()
	}
	cfg := &tls.Config{ServerName: c.ServerName}
	applyParams(cfg, c.TLSParams)
	if len(c.CertPEM) > 0 || len(c.KeyPEM) > 0 {
		cert, err := tls.X509KeyPair(c.CertPEM, c.KeyPEM)
		if err != nil {
			return nil, fmt.Errorf("%s: client certificate: %w", name, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	if len(c.RootCAPEM) == 0 {
		cfg.InsecureSkipVerify = true
		return cfg, nil
	}
	pool, err := certPool(c.RootCAPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: upstream CA: %w", name, err)
	}
	cfg.RootCAs = pool
	if c.ServerName == "" {
		// crypto/tls checks nothing when InsecureSkipVerify is set, so the
		// chain check is done here instead.
		cfg.InsecureSkipVerify = true
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			return verifyChain(cs.PeerCertificates, pool)
		}
	}
	return cfg, nil
}

// verifyChain verifies a peer's chain against roots without a name check.
func verifyChain(certs []*x509.Certificate, roots *x509.CertPool) error {
	if len(certs) == 0 {
		return errors.New("upstream sent no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	return err
}

// certPool parses PEM certificates, failing when there are none.
func certPool(pemData []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemData) {
		return nil, errors.New("no PEM certificate found")
	}
	return pool, nil
}

// applyParams copies the protocol settings shared by both sides.
func applyParams(cfg *tls.Config, p snapshot.TLSParams) {
	cfg.MinVersion = p.MinVersion
	cfg.MaxVersion = p.MaxVersion
	cfg.CipherSuites = append([]uint16(nil), p.CipherSuites...)
	cfg.CurvePreferences = append([]tls.CurveID(nil), p.Curves...)
	cfg.NextProtos = append([]string(nil), p.ALPN...)
}
