/*
 * internal.h - private declarations of libvchan-socket.
 *
 * SPDX-License-Identifier: MIT
 * Copyright (c) 2026 The vchan developers
 *
 * See docs/DESIGN.md for the theory of operation; the comments here name its terms.
 *
 * Locking. Four mutexes, never nested except slock -> wlock (taken in that order) and
 * nlock, a leaf that may be taken under any other:
 *  - slock: set-up state: the listener, the client's inotify fd and timerfd, accept and
 *    connect, listener users;
 *  - wlock: the write side: overflow, u_est, promised, the pusher flag;
 *  - rlock: the read side: the stash;
 *  - nlock: sock's epoll mask (mask_out) and the EPOLL_CTL_MOD calls that change it.
 * No mutex is held across a call that can block (poll, epoll_wait with a timeout).
 * `state`, `closed` and `blocking` are atomics; `sock` and `w` are written once, before
 * `state` leaves WAITING (release store), and read after an acquire load of `state`.
 *
 * Lifetime (handle.c). `refs` counts the owner (until libvchan_close), every API call in
 * progress and the pusher thread; whoever drops the last reference closes the descriptors
 * and frees the memory, so a close() from another thread never frees memory in use and no
 * descriptor number is reused while a call may still use it.
 */
#ifndef VCHAN_SOCKET_INTERNAL_H
#define VCHAN_SOCKET_INTERNAL_H

#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/epoll.h>
#include <sys/inotify.h>
#include <sys/types.h>

#include "libvchan.h"

/* The exported API. An embedding that compiles these sources into itself (the Python
 * extension vchan._speedups) defines VCHAN_API empty, so that it exports nothing of ours. */
#ifndef VCHAN_API
#define VCHAN_API __attribute__((visibility("default")))
#endif

/*
 * Constants. Each is written here only; the pure-Python engine has each under the same
 * name without the prefix (vchan._config or vchan._core.internal), and tests/test_mirror.py
 * checks that the two agree: a change here must be made there too.
 */
/* Xen's DOMID_FIRST_RESERVED: domains are 0 <= d < VCHAN__DOMAIN_LIMIT. */
#define VCHAN__DOMAIN_LIMIT 32752
/* Ring minimums above this make server init fail, as on Xen. */
#define VCHAN__RING_MIN_LIMIT ((size_t)1 << 20)
/* The client cannot learn the server's ring sizes: qrexec's data-channel size. */
#define VCHAN__CLIENT_RING 65536
/* sizeof(sun_path) - 1. */
#define VCHAN__PATH_MAX 107
/* Where the sockets are when $VCHAN_SOCKET_DIR is unset or empty. */
#define VCHAN__SOCKET_DIR "/var/run/vchan"
/*
 * Upper bound of the truesize one write of n bytes costs (DESIGN.md "tsz"):
 * n + TSZ_BASE + TSZ_STEP * (n >> TSZ_SHIFT). fit() inverts it, which needs
 * TSZ_STEP << FIT_SHIFT == 1 << TSZ_SHIFT.
 */
#define VCHAN__TSZ_BASE 2560
#define VCHAN__TSZ_STEP 1024
#define VCHAN__TSZ_SHIFT 15
#define VCHAN__FIT_SHIFT 5
/* SO_SNDBUF is raised so that W = S/4 >= W_RINGS * write_ring + W_EXTRA (DESIGN.md). */
#define VCHAN__W_RINGS 4
#define VCHAN__W_EXTRA 65536
/* Server set-up's directory lock: LOCK_NB tried DIRLOCK_TRIES times, DIRLOCK_WAIT_MS apart. */
#define VCHAN__DIRLOCK_TRIES 100
#define VCHAN__DIRLOCK_WAIT_MS 1
/* What a connecting client watches its socket directory for. */
#define VCHAN__INOTIFY_MASK (IN_CREATE | IN_MOVED_TO | IN_DELETE | IN_MOVED_FROM | IN_ATTRIB)
/* Client retry back-off for a refused connect (ms); without inotify, at most NOINOTIFY. */
#define VCHAN__BACKOFF_FIRST_MS 1
#define VCHAN__BACKOFF_MAX_MS 100
#define VCHAN__BACKOFF_NOINOTIFY_MS 10
/* wait() moves at most this many queued bytes into the stash (DESIGN.md, prefetch; C only). */
#define VCHAN__PREFETCH_MAX 4096

_Static_assert(VCHAN__TSZ_STEP << VCHAN__FIT_SHIFT == 1 << VCHAN__TSZ_SHIFT,
	       "fit() must invert tsz()");

struct libvchan {
	/* ---- immutable after init ---- */
	bool is_server;
	bool allow_any_uid;
	pid_t pid;          /* the process that created the channel (fork safety) */
	int epfd;           /* the select fd */
	size_t read_ring;
	size_t write_ring;
	char path[VCHAN__PATH_MAX + 1];

	/* ---- atomics ---- */
	int refs;
	int closed;
	int blocking;
	int state;          /* VCHAN_WAITING, VCHAN_CONNECTED, VCHAN_DISCONNECTED */

	/* ---- written once before state leaves WAITING ---- */
	int sock;           /* the connection (a blocking socket, see io.c), or -1 */
	size_t w;           /* W = SO_SNDBUF / 4 */

	/* ---- slock ---- */
	pthread_mutex_t slock;
	int listen_fd;      /* server: the listener while WAITING (or retired, see below) */
	int listen_users;   /* threads polling listen_fd outside slock */
	bool listen_retired;/* accepted: close listen_fd when listen_users drops to 0 */
	bool bound;         /* server: path names the socket we bound (dev/ino below) */
	dev_t bound_dev;
	ino_t bound_ino;
	bool connecting;    /* client: async connection not made yet */
	int ino_fd;         /* client that had to wait: inotify on the directory */
	int ino_wd;         /* its watch while connecting, else -1 */
	int tfd;            /* client while connecting: back-off timerfd */
	unsigned backoff_ms;

	/* ---- wlock ---- */
	pthread_mutex_t wlock;
	char *ovf;          /* overflow FIFO, capacity write_ring, allocated on first use */
	size_t ovf_head;
	size_t ovf_len;
	size_t u_est;       /* upper bound of the bytes (truesize) in flight, U */
	size_t promised;    /* credit left from the last buffer_space() */
	bool pusher;        /* a pusher thread is running */

	/* ---- notification (notify.c; DESIGN.md "Notification") ---- */
	size_t consumed;    /* atomic: bytes taken out of sock's kernel queue */
	size_t seen;        /* atomic: consumed + FIONREAD just before wait()'s last harvest */
	int latched;        /* atomic: a call other than wait() consumed an unseen event */
	int armed;          /* atomic: a consumption request is outstanding */
	int rearm;          /* atomic: a request made while armed (it may have fired already) */
	unsigned arm_seq;   /* atomic: odd while arm() is between its MOD and its harvest */
	int conn_event;     /* atomic: the connection is an event no wait() has reported yet */
	pthread_mutex_t nlock;
	bool mask_out;      /* nlock: EPOLLOUT is in sock's registration */

	/* ---- rlock ---- */
	pthread_mutex_t rlock;
	char *stash;        /* recv's buffer (capacity read_ring, more only to undo), lazy */
	size_t stash_cap;
	size_t stash_off;
	size_t stash_len;
	int kreaders;       /* atomic: blocking reads inside recv() without rlock */
	int prefetching;    /* atomic: wait() is moving queued bytes into the stash */
};

/* ---- atomics ---- */
#define vchan__load(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define vchan__store(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

/* ---- util.c ---- */
/*
 * Interruptible waits, for an embedding that must run code when a signal arrives (the
 * Python extension: its signal handlers). The shared library never sets the hook, so
 * every wait retries EINTR, as libvchan.h promises. When it is set, a wait that sleeps
 * with no lock held (poll, epoll_wait, a blocking recv) calls it on EINTR: 0 retries the
 * wait, anything else ends the API call with -1/EINTR, having consumed nothing that is
 * not kept (a partial recv stays in the stash). A wait made with a lock held never calls
 * it: no embedding code runs under our locks.
 */
extern int (*vchan__intr_hook)(void);
bool vchan__intr_retry(void);
size_t vchan__tsz(size_t n);
size_t vchan__fit(size_t room);
int vchan__local_domain(int *out);
int vchan__make_path(char *buf, int server_domain, int client_domain, int port);
bool vchan__env_allow_any_uid(void);
bool vchan__peer_trusted(int fd, bool allow_any_uid);
size_t vchan__setup_sndbuf(int fd, size_t write_ring);
int vchan__poll1(int fd, short events, int timeout_ms);
int vchan__poll1_locked(int fd, short events, int timeout_ms);
int vchan__poll_now(int fd, short events);
ssize_t vchan__send(int fd, const void *buf, size_t len);
ssize_t vchan__recv_flags(int fd, void *buf, size_t len, int flags);
int vchan__ioctl_int(int fd, unsigned long req);
void vchan__close_fd(int fd);
void vchan__lock(pthread_mutex_t *m);
void vchan__unlock(pthread_mutex_t *m);

/* ---- handle.c ---- */
struct libvchan *vchan__alloc(int allow_any_uid);
void vchan__abort(struct libvchan *c);
int vchan__enter(struct libvchan *c);
void vchan__leave(struct libvchan *c);
void vchan__ref(struct libvchan *c);
void vchan__unref(struct libvchan *c);

/* ---- init.c ---- */
/* The init functions with VCHAN_ALLOW_ANY_UID given (0 or 1) instead of read from the
 * environment (-1); the public ones pass -1. vchan__client_start() is client_init_async()
 * (watch true) and the start of client_init() (watch false). For the public functions and
 * an embedding (the Python extension). */
libvchan_t *vchan__server_init(int domain, int port, size_t read_min, size_t write_min,
			       int allow_any_uid);
libvchan_t *vchan__client_start(int domain, int port, EVTCHN *watch_fd, bool watch,
				int allow_any_uid);
void vchan__try_accept(struct libvchan *c, bool in_wait);
int vchan__wait_listener(struct libvchan *c);
int vchan__finish(struct libvchan *c, bool blocking);
void vchan__unlink_if_ours(struct libvchan *c);
void vchan__arm_timer(int tfd, long ns);

/* ---- notify.c ---- */
#define VCHAN__EPOLL_SOCK (EPOLLIN | EPOLLRDHUP | EPOLLET)
void vchan__latch(struct libvchan *c);
void vchan__arm(struct libvchan *c);
void vchan__set_disconnected(struct libvchan *c);
int vchan__settle(struct libvchan *c);
int vchan__wait_connected(struct libvchan *c);

/*
 * Bytes were taken out of the kernel queue: if some arrived after wait()'s last harvest,
 * their edge may be on epoll's ready list and this read may drop it, so latch (DESIGN.md).
 */
static inline void vchan__consumed(struct libvchan *c, size_t n)
{
	size_t k = __atomic_add_fetch(&c->consumed, n, __ATOMIC_ACQ_REL);

	if (k > vchan__load(&c->seen) && !vchan__load(&c->latched))
		vchan__latch(c);
}

/* ---- io.c ---- */
void vchan__ovf_discard(struct libvchan *c);
bool vchan__prefetch(struct libvchan *c, int sock);
int vchan__flush_overflow(struct libvchan *c, bool bounded, size_t *sent);

/* ---- pusher.c ---- */
int vchan__start_pusher(struct libvchan *c);

#endif /* VCHAN_SOCKET_INTERNAL_H */
