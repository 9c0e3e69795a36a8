package steer

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/tcpmap/tcpmap/datapath/internal/privtest"
)

// TestMain runs the tests in a private network namespace (when root): the
// sk_lookup program attaches to the test's own namespace, never the
// machine's. It fails the run on leaked goroutines or descriptors.
func TestMain(m *testing.M) {
	os.Exit(privtest.RunInNetNS(leakCheck{m}))
}

type leakCheck struct{ m *testing.M }

func (l leakCheck) Run() int {
	before := privtest.OpenFDs()
	code := l.m.Run()
	if code != 0 {
		return code
	}
	if err := goleak.Find(); err != nil {
		fmt.Fprintf(os.Stderr, "goroutine leak: %v\n", err)
		return 1
	}
	if after := privtest.OpenFDs(); after > before {
		fmt.Fprintf(os.Stderr, "file descriptor leak: %d open before the tests, %d after\n", before, after)
		return 1
	}
	return 0
}
