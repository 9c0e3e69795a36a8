package daemon

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// Values of --node-addresses besides a list.
const (
	NodeAddressesAuto = "auto"
	NodeAddressesAny  = "any"
)

// nodeAddressFilter turns --node-addresses into the manager's test of a
// listener address: nil when every address may be opened.
func nodeAddressFilter(o Options) (func(string) error, error) {
	spec := o.NodeAddresses
	if spec == "" && o.Kubernetes {
		// One configuration serves every node of a cluster; a mapping
		// pinned to another node's address is not this node's to open.
		spec = NodeAddressesAuto
	}
	return parseNodeAddresses(spec)
}

// parseNodeAddresses parses a --node-addresses value.
func parseNodeAddresses(spec string) (func(string) error, error) {
	switch spec {
	case "", NodeAddressesAny:
		return nil, nil
	case NodeAddressesAuto:
		// Read at every reload: addresses come and go on a node.
		return func(address string) error { return matchAddress(address, interfaceAddrs) }, nil
	}
	var fixed []netip.Addr
	for _, f := range strings.Split(spec, ",") {
		a, err := netip.ParseAddr(strings.TrimSpace(f))
		if err != nil {
			return nil, fmt.Errorf("%q is not an IP address (want auto, any or a comma-separated list of addresses)", f)
		}
		fixed = append(fixed, a.Unmap())
	}
	return func(address string) error {
		return matchAddress(address, func() ([]netip.Addr, error) { return fixed, nil })
	}, nil
}

func matchAddress(address string, addrs func() ([]netip.Addr, error)) error {
	want, err := netip.ParseAddr(address)
	if err != nil {
		return fmt.Errorf("address %q is not an IP address", address)
	}
	want = want.Unmap()
	have, err := addrs()
	if err != nil {
		return fmt.Errorf("list this node's addresses: %w", err)
	}
	for _, a := range have {
		if a == want {
			return nil
		}
	}
	return fmt.Errorf("%s is not one of this node's addresses", want)
}

func interfaceAddrs() ([]netip.Addr, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	out := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out, nil
}
