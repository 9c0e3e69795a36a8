package daemon

import (
	"context"
	"fmt"
	"os"
	"time"

	"go.uber.org/zap"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/tcpmap/tcpmap/userspace/kube"
	"github.com/tcpmap/tcpmap/userspace/manager"
)

// kubeSyncTimeout bounds the wait for the first list of every watched
// kind. Past it tcpmapd serves what it has (an API server that is down at
// start) and takes the rest as it arrives. A kind whose CRD is not
// installed is not waited for: discovery says so at once.
const kubeSyncTimeout = 30 * time.Second

// kubeConfig is the in-cluster configuration, or the kubeconfig file's.
func kubeConfig(path string) (*rest.Config, error) {
	if path == "" {
		c, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("--kubernetes: in-cluster config (or give --kubeconfig): %w", err)
		}
		return c, nil
	}
	c, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("--kubeconfig %s: %w", path, err)
	}
	return c, nil
}

// startKubernetes starts the Kubernetes source when --kubernetes is set;
// nil when it is not set. notify is called, debounced, when the watched
// objects change. Call waitKubernetes before the first reload, and close
// the returned source when done.
func startKubernetes(ctx context.Context, opts Options, log *zap.Logger, notify func()) (*kube.Source, error) {
	if !opts.Kubernetes {
		return nil, nil
	}
	rc, err := kubeConfig(opts.Kubeconfig)
	if err != nil {
		return nil, err
	}
	rc.UserAgent = "tcpmapd"
	node := os.Getenv("NODE_NAME") // the DaemonSet passes spec.nodeName
	if node == "" {
		node, _ = os.Hostname()
	}
	src, err := kube.NewForConfig(rc, kube.Options{
		Namespace: opts.WatchNamespace,
		OnChange:  notify,
		Host:      node,
		Logger:    log.Named("kubernetes"),
	})
	if err != nil {
		return nil, fmt.Errorf("--kubernetes: %w", err)
	}
	src.Start(ctx)
	return src, nil
}

// waitKubernetes waits, bounded, for the source's first sync, so that the
// first reload serves the cluster's mappings rather than none. The metrics
// server already answers /healthz meanwhile (/readyz only once ready), so
// a slow API server does not get the pod killed by its liveness probe.
func waitKubernetes(ctx context.Context, src *kube.Source, opts Options, log *zap.Logger) {
	if src == nil {
		return
	}
	kubeLog := log.Named("kubernetes")
	sctx, cancel := context.WithTimeout(ctx, kubeSyncTimeout)
	defer cancel()
	ns := opts.WatchNamespace
	if ns == "" {
		ns = "(all)"
	}
	if pending := src.WaitForSync(sctx); len(pending) > 0 {
		kubeLog.Warn("kubernetes API: not every kind listed in time; serving what arrived, the rest follows when it syncs",
			zap.Duration("waited", kubeSyncTimeout), zap.Strings("pending", pending), zap.String("namespace", ns))
	} else {
		kubeLog.Info("kubernetes API: watching", zap.String("namespace", ns))
	}
}

// publishOutcomes tells the Kubernetes source the outcome of the last
// reload, so it can emit Events; a no-op without --kubernetes.
func publishOutcomes(src *kube.Source, m *manager.Manager) {
	if src != nil {
		src.Publish(m.Outcomes())
	}
}
