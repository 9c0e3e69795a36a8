package e2e

import (
	"bufio"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestNodeAddresses: with --node-addresses auto (the default with
// --kubernetes) a node opens only listeners whose address is empty or one
// of its own; a mapping pinned to another node's address is reported as a
// warning naming it and not opened, and the node serves the rest.
func TestNodeAddresses(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	tp.serveEcho(t, "upstream", 7950, false)
	tp.serveEcho(t, "cockroach", 7951, false)
	cfg := configDir(t, nil, map[string]string{"node.yaml": `
apiVersion: getambassador.io/v3alpha1
kind: TCPMapping
metadata:
  name: here
spec:
  port: 7950
  address: ` + proxyA + `
  service: upstream:7950
---
apiVersion: getambassador.io/v3alpha1
kind: TCPMapping
metadata:
  name: everywhere
spec:
  port: 7951
  service: cockroach:7951
---
apiVersion: getambassador.io/v3alpha1
kind: TCPMapping
metadata:
  name: other-node
spec:
  port: 7952
  address: 192.0.2.77
  service: cockroach:7951
`})
	d := tp.start(t, daemonArgs([]string{cfg}, "--node-addresses", "auto")...)
	ctx := testContext(t, time.Minute)

	e, err := d.waitLog(ctx, "a warning for TCPMapping default/other-node", func(e logEntry) bool {
		return e.str("resource") == "TCPMapping default/other-node"
	})
	if err != nil {
		t.Fatal(err)
	}
	if e.str("level") != "warn" && e.str("level") != "warning" ||
		e.str("field") != "spec.address" || !strings.Contains(e.str("reason"), "192.0.2.77 is not one of this node's addresses") {
		t.Errorf("problem for default/other-node: level %q field %q reason %q; want a warning on spec.address naming 192.0.2.77",
			e.str("level"), e.str("field"), e.str("reason"))
	}

	for _, port := range []int{7950, 7951} {
		c, err := tp.connect(ctx, proxyAddr(port))
		if err != nil {
			t.Fatalf("port %d: %v", port, err)
		}
		if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
			t.Errorf("port %d: no greeting: %v", port, err)
		}
		c.Close()
	}
	// Not opened: no listener on 7952 on any of this node's addresses.
	if _, err := tp.connect(ctx, proxyAddr(7952)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("port 7952 of the other node's mapping: got %v, want connection refused", err)
	}
}
