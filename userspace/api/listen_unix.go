package api

import (
	"net"
	"sync"
	"syscall"
)

// umaskMu serialises the umask change: it is process-wide.
var umaskMu sync.Mutex

// listenUnixPrivate listens on a unix socket created with mode 0600.
func listenUnixPrivate(path string) (net.Listener, error) {
	umaskMu.Lock()
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	umaskMu.Unlock()
	return ln, err
}
