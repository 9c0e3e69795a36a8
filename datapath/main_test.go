package datapath

import (
	"os"
	"testing"

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
	os.Exit(privtest.RunInNetNS(privtest.LeakChecked(m)))
}
