package splice

import (
	"errors"
	"fmt"
	"math"

	"golang.org/x/sys/unix"
)

// holdLowat is the SO_RCVLOWAT that holds a socket's received bytes in its
// receive queue: sk_data_ready (and so the verdict) only runs once this
// many bytes are queued. The kernel caps it at half the receive buffer,
// which is why spliced sockets get a fixed SO_RCVBUF first: on a socket
// without one, a large SO_RCVLOWAT also raises the receive buffer and
// clamps the window for the rest of the connection.
const holdLowat = math.MaxInt32

// errNotEstablished: sock_hash accepts only ESTABLISHED TCP sockets; a
// peer that already sent FIN (CLOSE_WAIT) or reset cannot be spliced.
var errNotEstablished = errors.New("socket not in ESTABLISHED state (peer already closed?)")

func cookieOf(fd int) (uint64, error) {
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("getsockopt SO_COOKIE: %w", err)
	}
	return c, nil
}

func tcpInfo(fd int) (*unix.TCPInfo, error) {
	ti, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return nil, fmt.Errorf("getsockopt TCP_INFO: %w", err)
	}
	return ti, nil
}

// entered counts the bytes that entered the socket's write queue since
// the connection began: sent once (retransmissions excluded) plus not yet
// sent. Counted against a baseline taken at hand-off, it measures how much
// of what a direction redirected or wrote has reached the write queue.
// (tcpi_bytes_acked is no use here: it counts the SYN on one side only.)
func entered(ti *unix.TCPInfo) uint64 {
	return ti.Bytes_sent - ti.Bytes_retrans + uint64(ti.Notsent_bytes)
}

// baselines returns, for a held socket, how many bytes userspace read from
// it before hand-off (received minus still queued) and how many bytes
// entered its write queue so far. The two receive-side reads are repeated
// until no segment arrived between them. A FIN would make the count off by
// one (tcpi_bytes_received counts it, SIOCINQ does not), but a socket that
// received FIN is no longer ESTABLISHED and sock_hash refuses it, so such
// a hand-off fails anyway.
func baselines(fd int) (consumed, written uint64, err error) {
	ti1, err := tcpInfo(fd)
	if err != nil {
		return 0, 0, err
	}
	for range 100 {
		inq, err := unix.IoctlGetInt(fd, unix.SIOCINQ)
		if err != nil {
			return 0, 0, fmt.Errorf("ioctl SIOCINQ: %w", err)
		}
		ti2, err := tcpInfo(fd)
		if err != nil {
			return 0, 0, err
		}
		if ti1.Bytes_received == ti2.Bytes_received {
			return ti2.Bytes_received - uint64(inq), entered(ti2), nil
		}
		ti1 = ti2
	}
	return 0, 0, errors.New("receive counters kept moving while the socket was held")
}

func setRcvlowat(fd, v int) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVLOWAT, v); err != nil {
		return fmt.Errorf("setsockopt SO_RCVLOWAT %d: %w", v, err)
	}
	return nil
}

// setBuf sets SO_RCVBUF or SO_SNDBUF so that the kernel's buffer size
// (which is twice the value passed) becomes size. The FORCE variant lifts
// the net.core.[rw]mem_max cap when the process has CAP_NET_ADMIN.
func setBuf(fd, opt, force, size int) error {
	v := size / 2
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, force, v); err == nil {
		return nil
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, opt, v); err != nil {
		return fmt.Errorf("setsockopt buffer %d: %w", size, err)
	}
	return nil
}

// writable polls POLLOUT without waiting. A socket found full also gets
// SOCK_NOSPACE set by the poll, so the kernel signals write space later:
// waiting on the netpoller afterwards cannot miss the wake-up.
func writable(fd int) bool {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
	n, err := unix.Poll(pfd, 0)
	return err == nil && n > 0 && pfd[0].Revents&unix.POLLOUT != 0
}

func soError(fd int) error {
	v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return err
	}
	if v != 0 {
		return unix.Errno(v)
	}
	return nil
}

// lingerZero makes the next close send RST instead of FIN.
func lingerZero(fd int) error {
	return unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
}
