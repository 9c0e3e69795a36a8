package kube

import (
	"strings"

	"github.com/tcpmap/tcpmap/userspace/config"
)

// referencedSecrets is the set of "namespace/name" of the Secrets the
// loaded resources name: a TLSContext's secret and ca_secret, a Host's
// tlsSecret and tls.ca_secret. Only those are passed on, so that the other
// kubernetes.io/tls Secrets of a cluster (cert-manager's, half-issued ones)
// neither show up as tcpmap problems nor get tcpmap Events.
func referencedSecrets(rs []config.Resource) map[string]bool {
	out := make(map[string]bool)
	add := func(ns, name string) {
		if name != "" {
			out[ns+"/"+name] = true
		}
	}
	for _, r := range rs {
		ns := r.Ref.Namespace
		switch {
		case r.TLSContext != nil:
			c := r.TLSContext
			namespacing := c.SecretNamespacing == nil || *c.SecretNamespacing
			add(secretName(c.Secret, ns, namespacing))
			add(secretName(c.CASecret, ns, namespacing))
		case r.Host != nil:
			h := r.Host
			if h.TLSSecret != nil {
				sns := h.TLSSecret.Namespace
				if sns == "" {
					sns = ns
				}
				add(sns, h.TLSSecret.Name)
			}
			if h.TLS != nil {
				namespacing := h.TLS.SecretNamespacing == nil || *h.TLS.SecretNamespacing
				add(secretName(h.TLS.CASecret, ns, namespacing))
			}
		}
	}
	return out
}

// secretName splits a TLSContext secret reference as the resolve package
// does: "name", or with secret_namespacing (the default) "name.namespace".
func secretName(ref, defaultNS string, namespacing bool) (ns, name string) {
	if namespacing {
		if i := strings.LastIndex(ref, "."); i > 0 && i < len(ref)-1 {
			return ref[i+1:], ref[:i]
		}
	}
	return defaultNS, ref
}
