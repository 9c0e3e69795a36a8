//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * tcpmap splice datapath: an sk_skb stream verdict (no stream parser) that
 * moves the payload of a spliced client/upstream socket pair from one
 * socket's receive path straight to the other socket's send path, so the
 * bytes never cross into userspace.
 *
 * One "direction" is keyed by the cookie of the socket the bytes ARRIVE on
 * (client->upstream is keyed by the client socket's cookie). The verdict of
 * a socket runs under that socket's lock, so everything this program writes
 * for a direction (struct dir_state) has exactly one writer at a time and
 * needs no atomics.
 *
 * Bounded memory: an egress redirect consumes the bytes from the source
 * socket at once and parks them on the peer's psock queue until the peer's
 * worker can push them into its TCP write queue. That queue is charged to
 * no socket, so TCP flow control never sees it. The verdict therefore
 * tracks the "gap" (bytes redirected, or written by userspace, that have
 * not yet entered the peer's write queue, read from the peer's write_seq)
 * and, once the next skb would push it past the pair's bound, stops
 * redirecting: it returns SK_PASS, which queues the bytes on the source
 * socket itself where they ARE charged to its receive buffer, so the
 * window closes and the sender is slowed down by real TCP back-pressure.
 * Userspace is told through the events ring buffer, reads the passed bytes
 * and writes them to the peer in order, and hands the direction back to the
 * kernel once it has written everything that was passed (see
 * datapath/README.md for the full protocol).
 *
 * Ownership of map values, so that no writer clobbers another's fields:
 *   pairs          written once by userspace at hand-off, read here
 *   dirs           created zeroed by userspace at hand-off, then written
 *                  only here
 *   ctl            written only by userspace, read here
 *   mapping_totals written only here (per CPU, summed by userspace)
 */

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/* Default sizes; the loader overrides max_entries from its options. */
#define MAX_SOCKETS 131072
#define MAX_MAPPINGS 4096

/*
 * Minimal CO-RE views of kernel structures: only the fields read here. The
 * loader relocates the offsets against the running kernel's BTF, so no
 * kernel headers or vmlinux.h are needed and the layout may change between
 * kernel versions.
 */
struct sock {
	int sk_sndbuf;      /* send buffer limit (bytes of truesize) */
	int sk_wmem_queued; /* bytes of truesize queued in the write queue */
} __attribute__((preserve_access_index));

struct tcp_sock {
	__u32 write_seq; /* tail of the write queue: +1 per byte queued */
} __attribute__((preserve_access_index));

/* What a direction does with the skbs it receives. */
enum dir_mode {
	DIR_REDIRECT = 0, /* to the peer's egress, in the kernel */
	DIR_PASS = 1,     /* to this socket's own receive queue, for userspace */
};

/* Why a direction last entered DIR_PASS. */
enum pass_reason {
	PASS_NONE = 0,
	PASS_GAP = 1,             /* the gap would exceed the pair's bound */
	PASS_PEER_MISSING = 2,    /* peer not (or no longer) in sock_hash */
	PASS_REDIRECT_FAILED = 3, /* bpf_sk_redirect_hash refused */
	PASS_PEER_FULL = 4,       /* peer's send buffer has no room (PAIR_F_PEER_ROOM) */
};

enum event_kind {
	EVENT_PASS = 1, /* a direction entered DIR_PASS */
};

/* pair flags */
#define PAIR_F_PEER_ROOM 1 /* also pass when the peer's send buffer is full */

/* One direction's fixed configuration, written once at hand-off. */
struct pair {
	__u64 peer;       /* cookie of the socket the bytes go to */
	__u32 mapping_id; /* key in mapping_totals */
	__u32 bound;      /* most bytes allowed in the gap */
	__u32 flags;      /* PAIR_F_* */
	__u32 _pad;
};

/* One direction's state and counters, owned by this program. */
struct dir_state {
	__u64 redirected;     /* bytes redirected to the peer's egress */
	__u64 passed;         /* bytes returned SK_PASS (for userspace) */
	__u64 packets;        /* skbs with payload */
	__u64 last_active_ns; /* bpf_ktime_get_ns() of the last skb with payload */
	__u64 max_gap;        /* largest gap seen, bytes */
	__u32 last_gap;       /* gap at the last redirect decision, bytes */
	__u32 base;           /* peer write_seq at hand-off (see base_set) */
	__u32 base_set;
	enum dir_mode mode;
	__u32 pass_gen;       /* +1 at every entry into DIR_PASS */
	__u32 resumes;        /* DIR_PASS -> DIR_REDIRECT transitions */
	enum pass_reason pass_reason; /* why the last DIR_PASS began */
	__u32 zero_len;       /* zero-length skbs (bare FIN) dropped */
};

/* One direction's userspace-owned control word. */
struct dir_ctl {
	__u64 user_written; /* passed bytes userspace read AND fully wrote to the peer */
	__u32 resume_gen;   /* == pass_gen: userspace asks to resume the kernel path */
	__u32 _pad;
};

/* Per-mapping totals, one value per CPU. */
struct mapping_total {
	__u64 bytes;        /* payload bytes, both directions, redirected or passed */
	__u64 packets;      /* skbs with payload */
	__u64 passed_bytes; /* of bytes, those handed to userspace */
};

/* Ring buffer record. */
struct event {
	__u64 cookie; /* the direction's source socket */
	enum event_kind kind;
	__u32 pass_gen;
};

/*
 * Only used as a local variable, which BTF does not describe; this unused
 * pointer makes clang emit the type so bpf2go can generate its Go mirror.
 */
const struct event *unused_event __attribute__((unused));

/* Program-wide counters for rare paths, one value per CPU. */
struct prog_stats {
	__u64 no_pair;     /* skbs on sockets without a pair entry (SK_PASS) */
	__u64 events_lost; /* ring buffer full: userspace must rescan dirs */
};

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, MAX_SOCKETS);
	__type(key, __u64);   /* socket cookie */
	__type(value, __u64); /* fd on update; cookie on userspace lookup */
} sock_hash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MAX_SOCKETS);
	__type(key, __u64); /* source socket cookie */
	__type(value, struct pair);
} pairs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MAX_SOCKETS);
	__type(key, __u64);
	__type(value, struct dir_state);
} dirs SEC(".maps");

/*
 * Not preallocated on purpose: each userspace update then swaps in a new
 * element under RCU, so the verdict never reads a recycled element.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MAX_SOCKETS);
	__type(key, __u64);
	__type(value, struct dir_ctl);
} ctl SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, MAX_MAPPINGS);
	__type(key, __u32); /* mapping id, assigned by userspace */
	__type(value, struct mapping_total);
} mapping_totals SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct prog_stats);
} stats SEC(".maps");

static __always_inline struct prog_stats *stats_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&stats, &zero);
}

static __always_inline void count_mapping(__u32 id, __u32 len, int passed)
{
	struct mapping_total *t = bpf_map_lookup_elem(&mapping_totals, &id);

	if (!t) {
		struct mapping_total zero = {};

		/* Userspace creates the entry with the mapping id; this only
		 * covers an entry deleted underneath a live pair. */
		bpf_map_update_elem(&mapping_totals, &id, &zero, BPF_NOEXIST);
		t = bpf_map_lookup_elem(&mapping_totals, &id);
		if (!t)
			return;
	}
	t->bytes += len;
	t->packets++;
	if (passed)
		t->passed_bytes += len;
}

/* pass hands the skb to userspace through this socket's receive queue. */
static __always_inline int pass(struct pair *p, struct dir_state *d, __u32 len)
{
	d->passed += len;
	count_mapping(p->mapping_id, len, 1);
	return SK_PASS;
}

/*
 * enter_pass switches the direction to DIR_PASS and tells userspace, which
 * starts reading this socket. A lost event is counted so that userspace
 * rescans instead of leaving passed bytes unread.
 */
static __always_inline int enter_pass(__u64 cookie, struct pair *p, struct dir_state *d,
				      __u32 len, enum pass_reason why)
{
	struct event ev = {};

	d->mode = DIR_PASS;
	d->pass_gen++;
	d->pass_reason = why;

	ev.cookie = cookie;
	ev.kind = EVENT_PASS;
	ev.pass_gen = d->pass_gen;
	if (bpf_ringbuf_output(&events, &ev, sizeof(ev), 0)) {
		struct prog_stats *s = stats_get();

		if (s)
			s->events_lost++;
	}
	return pass(p, d, len);
}

SEC("sk_skb/stream_verdict")
int splice_verdict(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct pair *p;
	struct dir_state *d;
	struct dir_ctl *c;
	struct bpf_sock *sk;
	struct tcp_sock *tp;
	__u64 peer, user_written = 0;
	__u32 len = skb->len, resume_gen = 0, write_seq = 0;
	int sndbuf = 0, queued = 0, have_peer = 0;
	__s32 gap;

	/*
	 * A socket without a pair entry is one userspace is tearing down (or
	 * never finished handing off). SK_PASS keeps its bytes readable;
	 * SK_DROP would lose them, since TCP already acknowledged them.
	 */
	p = bpf_map_lookup_elem(&pairs, &cookie);
	d = bpf_map_lookup_elem(&dirs, &cookie);
	if (!p || !d) {
		struct prog_stats *s = stats_get();

		if (s)
			s->no_pair++;
		return SK_PASS;
	}

	/*
	 * A bare FIN reaches the verdict (sometimes) as a zero-length skb.
	 * Redirecting it makes the peer's worker "send" zero bytes, which it
	 * treats as an error (EPIPE); passing it can raise EPIPE on this
	 * socket. Dropping it loses nothing: userspace sees the end of stream
	 * through EPOLLRDHUP and propagates it with shutdown(SHUT_WR) once the
	 * redirected bytes have left.
	 */
	if (len == 0) {
		d->zero_len++;
		return SK_DROP;
	}

	d->last_active_ns = bpf_ktime_get_ns();
	d->packets++;

	c = bpf_map_lookup_elem(&ctl, &cookie);
	if (c) {
		user_written = c->user_written;
		resume_gen = c->resume_gen;
	}

	if (d->mode == DIR_PASS) {
		/*
		 * Back to the kernel path only when userspace asked for this
		 * very pass episode AND has written every byte passed so far:
		 * then nothing passed can still be on its way to the peer, and
		 * redirecting this skb cannot overtake it.
		 */
		if (resume_gen != d->pass_gen || d->passed != user_written)
			return pass(p, d, len);
		d->mode = DIR_REDIRECT;
		d->resumes++;
	}

	peer = p->peer;
	sk = bpf_map_lookup_elem(&sock_hash, &peer);
	if (!sk)
		return enter_pass(cookie, p, d, len, PASS_PEER_MISSING);
	tp = bpf_skc_to_tcp_sock(sk);
	if (tp) {
		/* tp carries sk's reference: read before the release. */
		write_seq = tp->write_seq;
		sndbuf = ((struct sock *)tp)->sk_sndbuf;
		queued = ((struct sock *)tp)->sk_wmem_queued;
		have_peer = 1;
	}
	bpf_sk_release(sk);
	if (!have_peer)
		return enter_pass(cookie, p, d, len, PASS_PEER_MISSING);

	/*
	 * base is the peer's write_seq minus everything this direction put
	 * in it since hand-off. It is fixed at the first decision, when no
	 * userspace write can be in progress (none started, or userspace is
	 * caught up and asked to resume), so later gaps are exact.
	 */
	if (!d->base_set) {
		d->base = write_seq - (__u32)user_written - (__u32)d->redirected;
		d->base_set = 1;
	}

	/* u32 arithmetic: sequence numbers wrap; a gap is far below 2 GiB. */
	gap = (__s32)(d->base + (__u32)d->redirected + (__u32)user_written - write_seq);
	if (gap < 0) /* a userspace write in flight: write_seq moved first */
		gap = 0;
	d->last_gap = gap;
	if ((__u64)gap > d->max_gap)
		d->max_gap = gap;

	if ((__u64)gap + len > p->bound)
		return enter_pass(cookie, p, d, len, PASS_GAP);
	/*
	 * The peer's worker pushes the gap into its write queue; when that
	 * queue is full it retries only one jiffy later, whatever frees space
	 * meanwhile. Passing instead of queueing behind a full send buffer lets
	 * userspace block on the socket's write-space wake-up instead.
	 */
	if ((p->flags & PAIR_F_PEER_ROOM) && (__s64)queued + gap + len > (__s64)sndbuf)
		return enter_pass(cookie, p, d, len, PASS_PEER_FULL);

	if (bpf_sk_redirect_hash(skb, &sock_hash, &peer, 0) != SK_PASS)
		return enter_pass(cookie, p, d, len, PASS_REDIRECT_FAILED);
	d->redirected += len;
	count_mapping(p->mapping_id, len, 0);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
