//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * tcpmap listener tables and socket steering.
 *
 * The manager writes the resolved mapping table into two maps, so that
 * `bpftool map dump` shows what the node serves with the same names
 * tcpmapctl uses:
 *
 *   listeners  (family, address, port) -> struct listener: the listener's
 *              id, which shared listening socket serves it and its
 *              mapping set (the ids of its mappings)
 *   mappings   mapping id -> struct mapping: name, upstream, weight and
 *              how the daemon carries it (kernel splice or userspace relay)
 *
 * The sk_lookup program steer_listener makes one listening socket per
 * address family serve every mapped port: for a new TCP connection whose
 * destination matches a listener (exact address first, then the wildcard
 * address 0), it assigns the shared socket from listen_socks. Adding or
 * removing a port is then one map update, with no bind. Connections to
 * anything else are left to the normal socket lookup (SK_PASS without an
 * assignment), so the program never takes traffic that is not mapped.
 *
 * Ownership: listeners, mappings and listen_socks are written only by
 * userspace; listener_stats only here.
 */

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

#define AF_INET 2
#define AF_INET6 10

#define MAX_LISTENERS 4096
#define MAX_MAPPINGS 4096
/* Mapping ids stored in a listener's value; a listener with more routes
 * keeps the first ones and sets LISTENER_F_TRUNCATED (inspection only:
 * routing is done by the daemon, not from this array). */
#define LISTENER_MAPPINGS 16

/* Index of the shared listening socket in listen_socks. */
enum listen_socket {
	LISTEN_IPV4 = 0,
	LISTEN_IPV6 = 1,
};

/* listener flags */
#define LISTENER_F_TLS 1       /* terminates TLS (routes by SNI) */
#define LISTENER_F_PROXY 2     /* expects a PROXY protocol header */
#define LISTENER_F_TRUNCATED 4 /* more mappings than mapping_ids holds */
#define LISTENER_F_STEERED 8   /* served through listen_socks (else its own socket) */

/* mapping flags */
#define MAPPING_F_SPLICE 1        /* cleartext passthrough: eligible for the kernel splice */
#define MAPPING_F_TLS_TERMINATE 2 /* TLS terminated by the relay */
#define MAPPING_F_TLS_ORIGINATE 4 /* TLS originated to the upstream */
#define MAPPING_F_PROXY_OUT 8     /* sends a PROXY header upstream */

struct listener_key {
	__u32 family;   /* AF_INET or AF_INET6 */
	__u32 port;     /* host byte order */
	__u8 addr[16];  /* network byte order; IPv4 in the first 4 bytes; all zero = any address */
};

struct listener {
	__u32 id;             /* listener id, assigned by userspace */
	enum listen_socket socket; /* which listen_socks entry serves it */
	__u32 flags;          /* LISTENER_F_* */
	__u32 n_mappings;     /* routes of the listener (may exceed LISTENER_MAPPINGS) */
	__u32 mapping_ids[LISTENER_MAPPINGS]; /* keys in mappings */
};

struct mapping {
	__u32 listener_id;
	__u32 weight;          /* share of the listener route's connections (of its total, normally 100) */
	__u32 flags;           /* MAPPING_F_* */
	__u32 idle_timeout_ms; /* 0 = none */
	char name[64];         /* namespace/name of the TCPMapping */
	char host[64];         /* SNI host it routes, empty for any */
	char upstream[96];     /* service as written: [scheme://]host:port */
};

/* Per-listener counters, one value per CPU. */
struct listener_stat {
	__u64 steered;   /* connections assigned to the shared socket */
	__u64 no_socket; /* matched, but no shared socket for the family */
	__u64 refused;   /* bpf_sk_assign refused the socket */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_LISTENERS);
	__type(key, struct listener_key);
	__type(value, struct listener);
} listeners SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_MAPPINGS);
	__type(key, __u32); /* mapping id, the same id as in mapping_totals */
	__type(value, struct mapping);
} mappings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 2);
	__type(key, __u32);   /* enum listen_socket */
	__type(value, __u64); /* socket fd on update, cookie on lookup */
} listen_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, MAX_LISTENERS);
	__type(key, __u32); /* listener id */
	__type(value, struct listener_stat);
} listener_stats SEC(".maps");

static __always_inline void count(__u32 id, int what)
{
	struct listener_stat *s = bpf_map_lookup_elem(&listener_stats, &id);

	if (!s) {
		struct listener_stat zero = {};

		bpf_map_update_elem(&listener_stats, &id, &zero, BPF_NOEXIST);
		s = bpf_map_lookup_elem(&listener_stats, &id);
		if (!s)
			return;
	}
	switch (what) {
	case 0:
		s->steered++;
		break;
	case 1:
		s->no_socket++;
		break;
	default:
		s->refused++;
	}
}

SEC("sk_lookup")
int steer_listener(struct bpf_sk_lookup *ctx)
{
	struct listener_key key = {};
	struct listener *l;
	struct bpf_sock *sk;
	__u32 idx;
	long err;

	if (ctx->protocol != IPPROTO_TCP)
		return SK_PASS;
	key.family = ctx->family;
	key.port = ctx->local_port;
	if (ctx->family == AF_INET) {
		__builtin_memcpy(key.addr, &ctx->local_ip4, 4);
	} else if (ctx->family == AF_INET6) {
		__builtin_memcpy(key.addr, ctx->local_ip6, 16);
	} else {
		return SK_PASS;
	}

	l = bpf_map_lookup_elem(&listeners, &key);
	if (!l) {
		__builtin_memset(key.addr, 0, sizeof(key.addr));
		l = bpf_map_lookup_elem(&listeners, &key);
		if (!l)
			return SK_PASS;
	}
	if (!(l->flags & LISTENER_F_STEERED))
		return SK_PASS; /* served by a socket of its own */

	idx = l->socket;
	sk = bpf_map_lookup_elem(&listen_socks, &idx);
	if (!sk) {
		count(l->id, 1);
		return SK_PASS;
	}
	err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	count(l->id, err ? 2 : 0);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
