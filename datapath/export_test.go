package datapath

// abandon closes every descriptor without detaching, unpinning or
// removing anything: the state a SIGKILL leaves behind, for tests.
func (o *Objects) abandon() {
	if o.link != nil {
		o.link.Close()
	}
	o.prog.Close()
	o.maps.Close()
	o.lock.Close()
	*o = Objects{}
}
