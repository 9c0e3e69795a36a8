package splice

import (
	"os"
	"testing"

	"github.com/tcpmap/tcpmap/datapath/internal/privtest"
)

// TestMain runs the tests in a private network namespace (when root) and
// fails the run if they leak goroutines or file descriptors: every test
// must close what it opened, engines included.
func TestMain(m *testing.M) {
	os.Exit(privtest.RunInNetNS(privtest.LeakChecked(m)))
}
