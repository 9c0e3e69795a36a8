// Package testutil holds the small helpers tests across tcpmap share. It
// imports no tcpmap package, so any package's own tests may use it.
package testutil

import (
	"fmt"
	"net"
	"testing"
)

// FreePort returns a loopback port nothing listens on at the time of the
// call.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// MappingYAML is a cleartext TCPMapping on 127.0.0.1:port, to a discard
// upstream (127.0.0.1:9): the smallest valid object for tests of loading,
// applying and listing.
func MappingYAML(name string, port int) string {
	return fmt.Sprintf(`apiVersion: getambassador.io/v3alpha1
kind: TCPMapping
metadata:
  name: %s
spec:
  address: 127.0.0.1
  port: %d
  service: 127.0.0.1:9
`, name, port)
}
