package e2e

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestMakeRunDemo runs what `make run` runs — tcpmapd on deploy/examples with
// the built-in demo upstream — inside a namespace of its own (so its fixed
// loopback ports cannot clash with the machine's) and checks that the demo
// probe saw bytes come back through both example listeners.
func TestMakeRunDemo(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	d := tp.start(t, daemonArgs([]string{"../../deploy/examples"}, "--demo-upstream", "127.0.0.1:7001")...)

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for _, listener := range []string{"127.0.0.1:7000", "127.0.0.1:7443"} {
		e, err := d.waitLog(ctx, "demo probe through "+listener, func(e logEntry) bool {
			return e.str("msg") == "demo probe: bytes flowed through tcpmapd" && e.str("listener") == listener
		})
		if err != nil {
			t.Fatal(err)
		}
		reply := e.str("reply")
		if !strings.Contains(reply, "hello from the tcpmap demo upstream") || !strings.Contains(reply, "echo: ping through tcpmapd") {
			t.Errorf("demo probe through %s: reply %q lacks the banner or the echo", listener, reply)
		}
	}
	if p := d.problems(); len(p) != 0 {
		t.Errorf("deploy/examples has config problems: %v", p)
	}
}
