package kube

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/tcpmap/tcpmap/userspace/config"
)

// secretUse is one place where a loaded resource names a Secret.
type secretUse struct {
	owner config.Ref
	field string // as the resolve package names it: "spec.ca_secret"
	// external: the owner comes from another source (a file, the admin
	// API), which reports its own problems.
	external bool
}

// referencedSecrets maps the "namespace/name" of every Secret the loaded
// resources name (a TLSContext's secret and ca_secret, a Host's tlsSecret
// and tls.ca_secret) to where it is named. Only those are passed on, so
// that the other Secrets of a cluster (cert-manager's, half-issued ones)
// neither show up as tcpmap problems nor get tcpmap Events.
func referencedSecrets(rs []config.Resource) map[string][]secretUse {
	out := make(map[string][]secretUse)
	for _, r := range rs {
		add := func(field, ns, name string) {
			if name != "" {
				out[ns+"/"+name] = append(out[ns+"/"+name], secretUse{owner: r.Ref, field: field})
			}
		}
		switch {
		case r.TLSContext != nil:
			c := r.TLSContext
			namespacing := c.SecretNamespacing == nil || *c.SecretNamespacing
			ns, name := secretName(c.Secret, r.Ref.Namespace, namespacing)
			add("spec.secret", ns, name)
			ns, name = secretName(c.CASecret, r.Ref.Namespace, namespacing)
			add("spec.ca_secret", ns, name)
		case r.Host != nil:
			h := r.Host
			if h.TLSSecret != nil {
				ns := h.TLSSecret.Namespace
				if ns == "" {
					ns = r.Ref.Namespace
				}
				add("spec.tlsSecret", ns, h.TLSSecret.Name)
			}
			if h.TLS != nil {
				namespacing := h.TLS.SecretNamespacing == nil || *h.TLS.SecretNamespacing
				ns, name := secretName(h.TLS.CASecret, r.Ref.Namespace, namespacing)
				add("spec.tls.ca_secret", ns, name)
			}
		}
	}
	return out
}

// Referenced is told, before each Resources, the resources of the other
// sources: the configuration files and the objects applied through the
// admin API (manager.Referrer). The Secrets they name and do not hold
// themselves are passed on from Kubernetes as well, so that a file's
// TLSContext or Host can use a Secret that lives only in the cluster.
// Those the other sources hold are not, so that no copy clashes with
// theirs.
func (s *Source) Referenced(others []config.Resource) {
	refs := referencedSecrets(others)
	for _, r := range others {
		if r.Ref.Kind == config.KindSecret {
			delete(refs, r.Ref.Namespace+"/"+r.Ref.Name)
		}
	}
	for _, uses := range refs {
		for i := range uses {
			uses[i].external = true
		}
	}
	s.mu.Lock()
	s.external = refs
	s.mu.Unlock()
}

// withExternal adds the other sources' references (Referenced) to refs
// and returns it. The caller holds s.mu.
func (s *Source) withExternal(refs map[string][]secretUse) map[string][]secretUse {
	for key, uses := range s.external {
		refs[key] = append(refs[key], uses...)
	}
	return refs
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

// secretWatch is an informer on one Secret, selected by name: a Secret a
// TLSContext or Host names that the kubernetes.io/tls informer does not
// hold (an Opaque CA bundle for ca_secret, or one not created yet). One
// small watch per name, rather than a watch of every Secret, keeps the
// cluster's other Secrets out of tcpmap's memory.
type secretWatch struct {
	inf    cache.SharedIndexInformer
	cancel context.CancelFunc
}

// watchSecrets starts a watch for every Secret in refs that the
// kubernetes.io/tls informer does not hold and, with prune, stops the
// watches no longer needed. It returns the problems of references outside
// the watched namespace, and the names ("Secret namespace/name") and
// HasSynced of the watches that have not listed yet. It never waits. The
// caller holds s.mu.
func (s *Source) watchSecrets(refs map[string][]secretUse, prune bool) (probs []config.Problem, pending []string, hasSynced []cache.InformerSynced) {
	tls := s.secrets.GetStore()
	want := make(map[string]bool, len(refs))
	for _, key := range sortedKeys(refs) {
		ns, name, _ := strings.Cut(key, "/")
		if s.opts.Namespace != "" && ns != s.opts.Namespace {
			// Otherwise the resolver's "not found" would be all the
			// operator sees of a Secret that exists.
			for _, u := range refs[key] {
				if u.external {
					continue // perhaps a typo, or in no cluster at all: "not found" says enough
				}
				probs = append(probs, config.Problem{Ref: u.owner, Origin: config.Origin{Source: SourceName},
					Field: u.field, Level: "error",
					Reason: fmt.Sprintf("Secret %s is outside the watched namespace %s (--watch-namespace), so tcpmap does not read it", key, s.opts.Namespace)})
			}
			continue
		}
		if _, ok, _ := tls.GetByKey(key); ok {
			continue
		}
		want[key] = true
		w := s.watches[key]
		if w == nil {
			if w = s.startSecretWatch(ns, name); w == nil {
				continue
			}
			s.watches[key] = w
		}
		if !w.inf.HasSynced() {
			pending, hasSynced = append(pending, config.KindSecret+" "+key), append(hasSynced, w.inf.HasSynced)
		}
	}
	if prune {
		for key, w := range s.watches {
			if !want[key] {
				w.cancel() // returns at once; Close waits for the informer
				delete(s.watches, key)
				delete(s.errLogs, config.KindSecret+" "+key)
				s.log.Debug("kubernetes API: stopped watching Secret", zap.String("secret", key))
			}
		}
	}
	return probs, pending, hasSynced
}

// startSecretWatch runs an informer on the Secret ns/name alone; nil
// before Start or after Close. The caller holds s.mu.
func (s *Source) startSecretWatch(ns, name string) *secretWatch {
	if s.ctx == nil || s.ctx.Err() != nil {
		return nil
	}
	inf := coreinformers.NewFilteredSecretInformer(s.opts.Clientset, ns, 0, cache.Indexers{}, func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("metadata.name", name).String()
	})
	key := ns + "/" + name
	if err := s.observe(config.KindSecret+" "+key, inf); err != nil {
		s.log.Error("kubernetes API: cannot watch Secret", zap.String("secret", key), zap.Error(err))
		return nil
	}
	ctx, cancel := context.WithCancel(s.ctx)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		inf.RunWithContext(ctx)
	}()
	s.log.Debug("kubernetes API: watching Secret by name (not kubernetes.io/tls, or not there yet)", zap.String("secret", key))
	return &secretWatch{inf: inf, cancel: cancel}
}

// awaitSecrets starts the watches the cached resources need and waits
// until they have listed or ctx ends, returning those still pending.
// Without it a reload right after a TLSContext names an Opaque CA Secret
// would reject the context until that Secret arrives, dropping its TLS
// routes for a moment, and publish a Rejected Event that is not true.
func (s *Source) awaitSecrets(ctx context.Context) []string {
	rs, _ := s.kindResources()
	s.mu.Lock()
	_, names, hasSynced := s.watchSecrets(s.withExternal(referencedSecrets(rs)), false)
	s.mu.Unlock()
	if len(hasSynced) == 0 || cache.WaitForCacheSync(ctx.Done(), hasSynced...) {
		return nil
	}
	var pending []string
	for i, synced := range hasSynced {
		if !synced() {
			pending = append(pending, names[i])
		}
	}
	return pending
}

// cachedSecret is the Secret "namespace/name" from the kubernetes.io/tls
// informer, else from its own watch; nil when neither holds it.
func (s *Source) cachedSecret(key string) *corev1.Secret {
	stores := []cache.Store{s.secrets.GetStore()}
	s.mu.Lock()
	if w := s.watches[key]; w != nil {
		stores = append(stores, w.inf.GetStore())
	}
	s.mu.Unlock()
	for _, st := range stores {
		if obj, ok, _ := st.GetByKey(key); ok {
			if sec, ok := obj.(*corev1.Secret); ok {
				return sec
			}
		}
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
