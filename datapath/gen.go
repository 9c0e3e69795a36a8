package datapath

// The verdict program lives in bpf/splice.c (C sources stay together in
// bpf/); bpf2go compiles it into splice_bpfel.o and writes splice_bpfel.go
// with the loader types and Go mirrors of the structs named by -type. Both
// files are committed so a checkout builds without clang; `make
// check-generate` regenerates them and fails on any difference, so the
// committed object always matches the source.
//
// clang-14 is pinned (and with it llvm-strip-14) because the object's bytes
// depend on the compiler version; the kernel UAPI and libbpf headers come
// from linux-libc-dev and libbpf-dev.
//
//go:generate go tool bpf2go -cc clang-14 -tags linux -target bpfel -type pair -type dir_state -type dir_ctl -type mapping_total -type event -type prog_stats -type dir_mode -type pass_reason -type event_kind splice ../bpf/splice.c -- -I/usr/include/x86_64-linux-gnu -Wall -Werror
//
// bpf/lookup.c holds the listener tables the manager syncs and the
// sk_lookup program that steers every mapped port to one listening socket
// per address family.
//
//go:generate go tool bpf2go -cc clang-14 -tags linux -target bpfel -type listener_key -type listener -type mapping -type listener_stat -type listen_socket lookup ../bpf/lookup.c -- -I/usr/include/x86_64-linux-gnu -Wall -Werror
