package kube

import (
	"context"
	"time"

	"go.uber.org/zap"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// DefaultRecheck is how often discovery is asked again, while a kind's
// CRD is missing, whether it has been installed since. The informer of a
// missing kind is not run meanwhile: it would never sync, and startup
// would wait for it until its timeout.
const DefaultRecheck = 30 * time.Second

// discoveryTimeout bounds one discovery request.
const discoveryTimeout = 10 * time.Second

// discover asks the API server which kinds it serves, starts their
// informers, and asks again every Recheck (and when a reload asks, at
// most once a second) until every kind is watched. While discovery fails
// (the API server is away) it retries with backoff from a second up to
// Recheck.
func (s *Source) discover(ctx context.Context) {
	defer s.wg.Done()
	minGap := min(time.Second, s.opts.Recheck)
	retry := minGap
	for {
		asked := time.Now()
		wait := s.opts.Recheck
		served, err := s.served(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			s.warnEvery("discovery", "kubernetes API: discovery of "+Group+"/"+Version+" failed; retrying with backoff",
				zap.Duration("retry_in", retry), zap.Error(err))
			wait, retry = retry, min(2*retry, s.opts.Recheck)
		default:
			retry = minGap
			if s.startKinds(ctx, served) == 0 {
				return // every kind is watched: nothing left to look for
			}
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		case <-s.rediscover:
			timer.Stop()
			// Reloads come in bursts; one request a second is plenty.
			if gap := minGap - time.Since(asked); gap > 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(gap):
				}
			}
		}
	}
}

// served returns the kinds the API server lists in getambassador.io/v3alpha1.
// A group version it does not know (no CRD of the group installed) serves
// none. When discovery itself is refused (a role without the usual
// system:discovery binding) every kind counts as served, so that their
// informers run and report what is wrong, as they did before discovery.
func (s *Source) served(ctx context.Context) (map[string]bool, error) {
	rctx, cancel := context.WithTimeout(ctx, discoveryTimeout)
	defer cancel()
	list, err := s.disc.ServerResourcesForGroupVersionWithContext(rctx, Group+"/"+Version)
	out := make(map[string]bool, len(Kinds))
	switch {
	case apierrors.IsNotFound(err):
		return out, nil
	case apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err):
		s.warnEvery("discovery", "kubernetes API: discovery refused; watching every kind, whether its CRD is installed or not",
			zap.Error(err))
		for _, k := range Kinds {
			out[k.Kind] = true
		}
		return out, nil
	case err != nil:
		return nil, err
	}
	for _, r := range list.APIResources {
		for _, k := range Kinds {
			if r.Name == k.Resource {
				out[k.Kind] = true
			}
		}
	}
	return out, nil
}

// startKinds starts the informers of the served kinds not started yet,
// logs the kinds that are missing the first time they are, and returns
// how many are still missing. After Close has begun it starts nothing.
func (s *Source) startKinds(ctx context.Context, served map[string]bool) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ctx.Err() != nil {
		return 0
	}
	var started, missing, newlyMissing []string
	for _, k := range Kinds {
		if s.kinds[k.Kind] != nil {
			continue
		}
		if !served[k.Kind] {
			missing = append(missing, crdName(k.Resource))
			if !s.missing[k.Kind] {
				s.missing[k.Kind] = true
				newlyMissing = append(newlyMissing, crdName(k.Resource))
			}
			continue
		}
		inf := s.dyn.ForResource(schema.GroupVersionResource{Group: Group, Version: Version, Resource: k.Resource}).Informer()
		if err := s.observe(k.Kind, inf); err != nil {
			s.log.Error("kubernetes API: cannot watch kind", zap.String("kind", k.Kind), zap.Error(err))
			continue
		}
		s.kinds[k.Kind] = inf
		if s.missing[k.Kind] {
			delete(s.missing, k.Kind)
			started = append(started, crdName(k.Resource))
		}
	}
	s.dyn.Start(ctx.Done()) // the informers made above; the others run already
	if len(newlyMissing) > 0 {
		s.log.Warn("kubernetes API: missing CRDs; their kinds are empty until the CRDs are installed (looked for again every "+s.opts.Recheck.String()+" and at each reload)",
			zap.Strings("missing", newlyMissing))
	}
	if len(started) > 0 {
		s.log.Info("kubernetes API: CRDs now installed; watching their kinds", zap.Strings("crds", started))
	}
	select {
	case <-s.discovered:
	default:
		close(s.discovered)
	}
	return len(missing)
}

// crdName is the name of the CRD of a resource: "listeners.getambassador.io".
func crdName(resource string) string {
	return resource + "." + Group
}

// warnEvery logs a warning at most once per errorLogEvery for key.
func (s *Source) warnEvery(key, msg string, fields ...zap.Field) {
	s.mu.Lock()
	due := time.Since(s.errLogs[key]) >= errorLogEvery
	if due {
		s.errLogs[key] = time.Now()
	}
	s.mu.Unlock()
	if due {
		s.log.Warn(msg, fields...)
	}
}
