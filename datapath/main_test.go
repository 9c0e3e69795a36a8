package datapath

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/tcpmap/tcpmap/datapath/internal/privtest"
)

// TestMain fails the run if the tests leak goroutines or file
// descriptors (an unclosed map or program is a leaked descriptor). A
// re-executed child that only loads and waits to be killed (see
// TestRestartAfterSIGKILL) never gets here.
func TestMain(m *testing.M) {
	if dir := os.Getenv(hangEnv); dir != "" {
		os.Exit(loadAndHang(dir))
	}
	before := privtest.OpenFDs()
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goroutine leak: %v\n", err)
			code = 1
		} else if after := privtest.OpenFDs(); after > before {
			fmt.Fprintf(os.Stderr, "file descriptor leak: %d open before the tests, %d after\n", before, after)
			code = 1
		}
	}
	os.Exit(code)
}
