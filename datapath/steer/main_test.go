package steer

import (
	"os"
	"testing"

	"github.com/tcpmap/tcpmap/datapath/internal/privtest"
)

// TestMain runs the tests in a private network namespace (when root): the
// sk_lookup program attaches to the test's own namespace, never the
// machine's. It fails the run on leaked goroutines or descriptors.
func TestMain(m *testing.M) {
	os.Exit(privtest.RunInNetNS(privtest.LeakChecked(m)))
}
