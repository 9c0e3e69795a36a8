package datapath

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/tcpmap/tcpmap/datapath/internal/privtest"
)

// TestMain runs the tests in a private network namespace (when root), so
// the sk_lookup program Load attaches never sees the machine's traffic,
// and fails the run if the tests leak goroutines or file descriptors (an
// unclosed map or program is a leaked descriptor). A re-executed child
// that only loads and waits to be killed (see TestRestartAfterSIGKILL)
// never gets here.
func TestMain(m *testing.M) {
	if dir := os.Getenv(hangEnv); dir != "" {
		os.Exit(loadAndHang(dir))
	}
	os.Exit(privtest.RunInNetNS(leakCheck{m}))
}

type leakCheck struct{ m *testing.M }

func (l leakCheck) Run() int {
	before := privtest.OpenFDs()
	code := l.m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goroutine leak: %v\n", err)
			code = 1
		} else if after := privtest.OpenFDs(); after > before {
			fmt.Fprintf(os.Stderr, "file descriptor leak: %d open before the tests, %d after\n", before, after)
			code = 1
		}
	}
	return code
}
