package resolve

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/tcpmap/tcpmap/userspace/config"
	"github.com/tcpmap/tcpmap/userspace/snapshot"
	"github.com/tcpmap/tcpmap/userspace/tlsconfig"
)

// tlsFields are the TLS settings shared by a TLSContext and a Host's
// inline `tls`, with where they came from.
type tlsFields struct {
	owner *config.Resource // the TLSContext or Host, for names and namespaces
	field string           // prefix of the field names in messages: "spec" or "spec.tls"

	secret          string
	certChainFile   string
	privateKeyFile  string
	caSecret        string
	caCertChainFile string
	crlSecret       string
	alpn            string
	certRequired    bool
	minVersion      string
	maxVersion      string
	cipherSuites    []string
	ecdhCurves      []string
	namespacing     bool
	sni             string
}

func contextFields(res *config.Resource) tlsFields {
	s := res.TLSContext
	return tlsFields{
		owner: res, field: "spec",
		secret: s.Secret, certChainFile: s.CertChainFile, privateKeyFile: s.PrivateKeyFile,
		caSecret: s.CASecret, caCertChainFile: s.CACertChainFile, crlSecret: s.CRLSecret,
		alpn: s.ALPNProtocols, certRequired: s.CertRequired != nil && *s.CertRequired,
		minVersion: s.MinTLSVersion, maxVersion: s.MaxTLSVersion,
		cipherSuites: s.CipherSuites, ecdhCurves: s.ECDHCurves,
		namespacing: s.SecretNamespacing == nil || *s.SecretNamespacing, sni: s.SNI,
	}
}

func hostTLSFields(res *config.Resource) tlsFields {
	f := tlsFields{owner: res, field: "spec.tls", namespacing: true}
	s := res.Host.TLS
	if s == nil {
		return f
	}
	f.certChainFile, f.privateKeyFile = s.CertChainFile, s.PrivateKeyFile
	f.caSecret, f.caCertChainFile, f.crlSecret = s.CASecret, s.CACertChainFile, s.CRLSecret
	f.alpn, f.certRequired = s.ALPNProtocols, s.CertRequired != nil && *s.CertRequired
	f.minVersion, f.maxVersion = s.MinTLSVersion, s.MaxTLSVersion
	f.cipherSuites, f.ecdhCurves = s.CipherSuites, s.ECDHCurves
	f.namespacing = s.SecretNamespacing == nil || *s.SecretNamespacing
	f.sni = s.SNI
	return f
}

// errorf names the owner and field: "TLSContext ns/c spec.secret: ...".
func (f *tlsFields) errorf(field, format string, args ...any) error {
	return fmt.Errorf("%s %s.%s: %s", shortRef(f.owner), f.field, field, fmt.Sprintf(format, args...))
}

// params parses the protocol settings.
func (r *resolver) params(f *tlsFields) (snapshot.TLSParams, error) {
	var p snapshot.TLSParams
	var err error
	if p.MinVersion, err = tlsconfig.ParseVersion(f.minVersion); err != nil {
		return p, f.errorf("min_tls_version", "%v", err)
	}
	if p.MaxVersion, err = tlsconfig.ParseVersion(f.maxVersion); err != nil {
		return p, f.errorf("max_tls_version", "%v", err)
	}
	if p.MinVersion != 0 && p.MaxVersion != 0 && p.MinVersion > p.MaxVersion {
		return p, f.errorf("min_tls_version", "%s is above max_tls_version %s", f.minVersion, f.maxVersion)
	}
	if p.CipherSuites, err = tlsconfig.ParseCipherSuites(f.cipherSuites); err != nil {
		return p, f.errorf("cipher_suites", "%v", err)
	}
	if weak := tlsconfig.InsecureSuites(p.CipherSuites); len(weak) > 0 {
		r.warnf(f.owner, f.field+".cipher_suites", "enables suites crypto/tls classes as insecure: %s", strings.Join(weak, ", "))
	}
	if p.Curves, err = tlsconfig.ParseCurves(f.ecdhCurves); err != nil {
		return p, f.errorf("ecdh_curves", "%v", err)
	}
	p.ALPN = tlsconfig.ParseALPN(f.alpn)
	if f.crlSecret != "" {
		// Accepting it would silently trust revoked certificates.
		return p, f.errorf("crl_secret", "certificate revocation lists are not supported by tcpmap")
	}
	return p, nil
}

// secretName splits a TLSContext secret reference: "name", or with
// secret_namespacing (the default) "name.namespace". Kubernetes namespaces
// cannot contain dots, so the namespace is what follows the last dot.
func secretName(ref, defaultNS string, namespacing bool) (ns, name string) {
	if namespacing {
		if i := strings.LastIndex(ref, "."); i > 0 && i < len(ref)-1 {
			return ref[i+1:], ref[:i]
		}
	}
	return defaultNS, ref
}

// findSecret returns the Secret ns/name or an error naming it.
func (r *resolver) findSecret(ns, name string) (*config.SecretData, error) {
	s := r.secrets[ns+"/"+name]
	if s == nil {
		return nil, fmt.Errorf("Secret %s/%s not found", ns, name)
	}
	return s.Secret, nil
}

// keyPair loads a certificate and key from the secret or the files of f.
// ok is false when f names neither.
func (r *resolver) keyPair(f *tlsFields) (cert, key []byte, ok bool, err error) {
	switch {
	case f.secret != "" && f.certChainFile != "":
		return nil, nil, false, f.errorf("secret", "secret and cert_chain_file cannot both be set")
	case f.certChainFile != "" && f.privateKeyFile == "":
		return nil, nil, false, f.errorf("cert_chain_file", "cert_chain_file needs private_key_file")
	case f.privateKeyFile != "" && f.certChainFile == "":
		return nil, nil, false, f.errorf("private_key_file", "private_key_file needs cert_chain_file")
	case f.secret != "":
		ns, name := secretName(f.secret, f.owner.Ref.Namespace, f.namespacing)
		s, err := r.findSecret(ns, name)
		if err != nil {
			return nil, nil, false, f.errorf("secret", "%v", err)
		}
		if err := checkPair(s.Cert, s.Key); err != nil {
			return nil, nil, false, f.errorf("secret", "Secret %s/%s: %v", ns, name, err)
		}
		return s.Cert, s.Key, true, nil
	case f.certChainFile != "":
		cert, err := r.opts.ReadFile(f.certChainFile)
		if err != nil {
			return nil, nil, false, f.errorf("cert_chain_file", "%v", err)
		}
		key, err := r.opts.ReadFile(f.privateKeyFile)
		if err != nil {
			return nil, nil, false, f.errorf("private_key_file", "%v", err)
		}
		if err := checkPair(cert, key); err != nil {
			return nil, nil, false, f.errorf("cert_chain_file", "%v", err)
		}
		return cert, key, true, nil
	}
	return nil, nil, false, nil
}

// hostKeyPair loads a Host's tlsSecret.
func (r *resolver) hostKeyPair(h *config.Resource) (cert, key []byte, err error) {
	ref := h.Host.TLSSecret
	ns := ref.Namespace
	if ns == "" {
		ns = h.Ref.Namespace
	}
	s, err := r.findSecret(ns, ref.Name)
	if err != nil {
		return nil, nil, fmt.Errorf("%s spec.tlsSecret: %w", shortRef(h), err)
	}
	if err := checkPair(s.Cert, s.Key); err != nil {
		return nil, nil, fmt.Errorf("%s spec.tlsSecret: Secret %s/%s: %w", shortRef(h), ns, ref.Name, err)
	}
	return s.Cert, s.Key, nil
}

func checkPair(cert, key []byte) error {
	switch {
	case len(cert) == 0:
		return errors.New("no tls.crt")
	case len(key) == 0:
		return errors.New("no tls.key (a CA-only Secret cannot present a certificate)")
	}
	if _, err := tls.X509KeyPair(cert, key); err != nil {
		return fmt.Errorf("tls.crt/tls.key: %w", err)
	}
	return nil
}

// caPEM loads the CA certificates of f (ca_secret's tls.crt, else its
// ca.crt; or cacert_chain_file), or nil when f names none.
func (r *resolver) caPEM(f *tlsFields) ([]byte, error) {
	var data []byte
	switch {
	case f.caSecret != "" && f.caCertChainFile != "":
		return nil, f.errorf("ca_secret", "ca_secret and cacert_chain_file cannot both be set")
	case f.caSecret != "":
		ns, name := secretName(f.caSecret, f.owner.Ref.Namespace, f.namespacing)
		s, err := r.findSecret(ns, name)
		if err != nil {
			return nil, f.errorf("ca_secret", "%v", err)
		}
		data = s.Cert
		if len(data) == 0 {
			data = s.CA
		}
		if len(data) == 0 {
			return nil, f.errorf("ca_secret", "Secret %s/%s has no tls.crt or ca.crt", ns, name)
		}
	case f.caCertChainFile != "":
		var err error
		if data, err = r.opts.ReadFile(f.caCertChainFile); err != nil {
			return nil, f.errorf("cacert_chain_file", "%v", err)
		}
	default:
		return nil, nil
	}
	if !x509.NewCertPool().AppendCertsFromPEM(data) {
		return nil, f.errorf("ca_secret", "no PEM certificate found")
	}
	return data, nil
}

// findContext looks up the TLSContext a TCPMapping's `tls` names, from the
// mapping's namespace ns: "name.namespace" first (when such a context
// exists), then the name in ns, then the name in any namespace, as Emissary
// does; a name found in several other namespaces is ambiguous.
func (r *resolver) findContext(name, ns string) (*config.Resource, error) {
	if i := strings.LastIndex(name, "."); i > 0 {
		if c := r.contexts[name[i+1:]+"/"+name[:i]]; c != nil {
			return c, nil
		}
	}
	if c := r.contexts[ns+"/"+name]; c != nil {
		return c, nil
	}
	switch all := r.contextsByName[name]; len(all) {
	case 0:
		return nil, fmt.Errorf("no TLSContext named %q", name)
	case 1:
		return all[0], nil
	default:
		var nss []string
		for _, c := range all {
			nss = append(nss, c.Ref.Namespace)
		}
		return nil, fmt.Errorf("TLSContext %q exists in several namespaces (%s) and none is %s; write %s.NAMESPACE",
			name, strings.Join(nss, ", "), ns, name)
	}
}

// origination builds the client TLS to the upstream host, or nil for
// cleartext.
//
// Emissary leaves the upstream in cleartext when `tls` names a context it
// cannot find; tcpmap discards the mapping instead, because a user who
// asked for TLS must never have their bytes silently sent in the clear.
func (r *resolver) origination(m *config.Resource, svc service, upstreamHost string) (*snapshot.TLSClient, error) {
	ref := m.TCPMapping.TLS
	if !svc.https && (ref == nil || !ref.Originate) {
		return nil, nil
	}
	out := &snapshot.TLSClient{}
	// SNI defaults to the host dialed, as any TLS client does. Emissary
	// sends none, which breaks upstreams that route or pick certificates
	// by SNI. IP literals are never sent as SNI (RFC 6066).
	if !isIPLiteral(upstreamHost) {
		out.ServerName = strings.TrimSuffix(upstreamHost, ".")
	}
	if ref == nil || ref.Context == "" {
		return out, nil
	}
	ctx, err := r.findContext(ref.Context, m.Ref.Namespace)
	if err != nil {
		return nil, err
	}
	ctxRef := ctx.Ref
	out.Context = &ctxRef
	f := contextFields(ctx)
	if f.sni != "" {
		out.ServerName = f.sni
	}
	// A context without a certificate is fine for origination (only sni,
	// or only a CA): Emissary refuses it (issue 4476), tcpmap does not.
	if out.CertPEM, out.KeyPEM, _, err = r.keyPair(&f); err != nil {
		return nil, err
	}
	if out.RootCAPEM, err = r.caPEM(&f); err != nil {
		return nil, err
	}
	if out.TLSParams, err = r.params(&f); err != nil {
		return nil, err
	}
	return out, nil
}

// termination finds the server TLS for a TCPMapping host: the first Host
// with a certificate whose hostname glob matches it, else a TLSContext
// listing it verbatim in hosts (globs there are compared as plain strings,
// as the docs say), else none.
func (r *resolver) termination(host string) (*snapshot.TLSServer, error) {
	for _, h := range r.hosts {
		if snapshot.GlobMatches(hostname(h), host) {
			return r.hostTermination(h)
		}
	}
	var matches []*config.Resource
	for _, c := range r.contexts {
		for _, ch := range c.TLSContext.Hosts {
			if strings.EqualFold(strings.TrimSuffix(ch, "."), host) {
				matches = append(matches, c)
				break
			}
		}
	}
	if len(matches) == 0 {
		return nil, fmt.Errorf("no Host or TLSContext provides TLS for host %s", host)
	}
	slices.SortFunc(matches, func(a, b *config.Resource) int { return strings.Compare(refKey(a.Ref), refKey(b.Ref)) })
	// Use the first context that can actually terminate: a context whose
	// secret is missing or broken must not take down every mapping of the
	// host when another context lists it too. The broken one is reported
	// against itself.
	var firstErr error
	broken := map[*config.Resource]bool{}
	for _, c := range matches {
		srv, err := r.contextTermination(c, host)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			if len(matches) > 1 {
				broken[c] = true
				r.errorf(c, "spec.hosts", "cannot terminate TLS for host %s: %v", host, err)
			}
			continue
		}
		for _, other := range matches {
			if other != c && !broken[other] {
				r.warnf(other, "spec.hosts", "host %s is also listed by %s, which is used for it", host, shortRef(c))
			}
		}
		return srv, nil
	}
	return nil, firstErr
}

// contextTermination builds the server TLS of a TLSContext used for host.
func (r *resolver) contextTermination(c *config.Resource, host string) (*snapshot.TLSServer, error) {
	f := contextFields(c)
	cert, key, ok, err := r.keyPair(&f)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, f.errorf("secret", "lists host %s but has no certificate to terminate TLS with", host)
	}
	return r.server(&f, c.Ref, cert, key)
}

// hostTermination builds the server TLS of a Host: the certificate from
// tlsSecret (else its tlsContext's secret), parameters from tlsContext or
// the inline tls.
func (r *resolver) hostTermination(h *config.Resource) (*snapshot.TLSServer, error) {
	f := hostTLSFields(h)
	if nr := h.Host.TLSContext; nr != nil {
		c := r.contexts[h.Ref.Namespace+"/"+nr.Name]
		if c == nil {
			return nil, fmt.Errorf("%s spec.tlsContext: no TLSContext %s/%s", shortRef(h), h.Ref.Namespace, nr.Name)
		}
		f = contextFields(c)
	}
	var cert, key []byte
	var err error
	if h.Host.TLSSecret != nil {
		cert, key, err = r.hostKeyPair(h)
	} else {
		var ok bool
		cert, key, ok, err = r.keyPair(&f)
		if err == nil && !ok {
			err = f.errorf("secret", "no certificate for %s", shortRef(h))
		}
	}
	if err != nil {
		return nil, err
	}
	return r.server(&f, h.Ref, cert, key)
}

func (r *resolver) server(f *tlsFields, src config.Ref, cert, key []byte) (*snapshot.TLSServer, error) {
	out := &snapshot.TLSServer{Source: src, CertPEM: cert, KeyPEM: key, CertRequired: f.certRequired}
	var err error
	if out.ClientCAPEM, err = r.caPEM(f); err != nil {
		return nil, err
	}
	if out.CertRequired && out.ClientCAPEM == nil {
		return nil, f.errorf("cert_required", "cert_required needs ca_secret or cacert_chain_file to verify client certificates")
	}
	if out.TLSParams, err = r.params(f); err != nil {
		return nil, err
	}
	return out, nil
}
