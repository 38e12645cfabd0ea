/*
 * io.c - the data path: read, recv, write, send, data_ready, buffer_space.
 *
 * SPDX-License-Identifier: MIT
 * Copyright (c) 2026 The vchan developers
 *
 * See docs/DESIGN.md ("Writes", "Reads") for the algorithm; the comments here name its
 * terms. In short: the common path of every call is one send() or recv(); the connection
 * is a blocking socket that every call which must not wait uses with MSG_DONTWAIT.
 */
#include <errno.h>
#include <linux/sockios.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include "internal.h"

#define POLL_GONE (POLLRDHUP | POLLHUP | POLLERR)

static size_t vchan__min(size_t a, size_t b)
{
	return a < b ? a : b;
}

/* ------------------------------------------------------------------ overflow FIFO */

/* Append n bytes (wlock held; caller checked the room and allocated the buffer). */
static void vchan__ovf_append(struct libvchan *c, const char *p, size_t n)
{
	size_t cap = c->write_ring;
	size_t tail = (c->ovf_head + c->ovf_len) % cap;
	size_t first = vchan__min(n, cap - tail);

	memcpy(c->ovf + tail, p, first);
	memcpy(c->ovf, p + first, n - first);
	c->ovf_len += n;
}

static void vchan__ovf_consume(struct libvchan *c, size_t n)
{
	c->ovf_len -= n;
	c->ovf_head = c->ovf_len ? (c->ovf_head + n) % c->write_ring : 0;
}

void vchan__ovf_discard(struct libvchan *c)
{
	c->ovf_len = 0;
	c->ovf_head = 0;
}

/*
 * Make room for bytes in the overflow: allocate it and make sure a pusher runs
 * (wlock held). Returns how many of n bytes may be appended now.
 */
static size_t vchan__ovf_reserve(struct libvchan *c, size_t n)
{
	n = vchan__min(n, c->write_ring - c->ovf_len);
	if (n == 0)
		return 0;
	if (!c->ovf) {
		c->ovf = malloc(c->write_ring);
		if (!c->ovf)
			return 0;
	}
	if (!c->pusher && vchan__start_pusher(c) != 0)
		return 0;
	return n;
}

/* ------------------------------------------------------------------ kernel writes */

/* send() the bytes as they are; the kernel may take them beyond W. -1/EPIPE if gone. */
static ssize_t vchan__sendk(struct libvchan *c, const char *p, size_t n)
{
	ssize_t r = vchan__send(c->sock, p, n);

	if (r >= 0) {
		c->u_est += vchan__tsz((size_t)r);
		return r;
	}
	if (errno == EAGAIN || errno == EWOULDBLOCK)
		return 0;
	if (errno == EPIPE || errno == ECONNRESET || errno == ENOTCONN) {
		vchan__set_disconnected(c);
		errno = EPIPE;
	}
	return -1;
}

/* W - U as the payload that fits, re-measuring U (wlock held). */
static size_t vchan__room_raw(struct libvchan *c);

static size_t vchan__room(struct libvchan *c)
{
	return vchan__fit(vchan__room_raw(c));
}

/* W - U (bytes of truesize still below W), re-measuring U (wlock held). */
static size_t vchan__room_raw(struct libvchan *c)
{
	int u = vchan__ioctl_int(c->sock, SIOCOUTQ);

	if (u < 0)
		return 0;
	c->u_est = (size_t)u;
	return c->w > (size_t)u ? c->w - (size_t)u : 0;
}

/* Send at most fit(W - U) bytes so that U <= W holds after (wlock held). */
static ssize_t vchan__push(struct libvchan *c, const char *p, size_t n)
{
	if (c->u_est + vchan__tsz(n) > c->w) {
		n = vchan__min(n, vchan__room(c));
		if (n == 0)
			return 0;
	}
	return vchan__sendk(c, p, n);
}

/*
 * Move overflow bytes into the kernel, bounded by the invariant or not (wlock held).
 * Returns 0 (the overflow may still hold bytes) or -1 with errno.
 */
int vchan__flush_overflow(struct libvchan *c, bool bounded, size_t *sent)
{
	while (c->ovf_len) {
		size_t chunk = vchan__min(c->ovf_len, c->write_ring - c->ovf_head);
		const char *p = c->ovf + c->ovf_head;
		ssize_t k = bounded ? vchan__push(c, p, chunk) : vchan__sendk(c, p, chunk);

		if (k < 0)
			return -1;
		if (k == 0)
			break;
		vchan__ovf_consume(c, (size_t)k);
		if (sent)
			*sent += (size_t)k;
	}
	return 0;
}

/*
 * Accept what can be accepted without waiting (wlock held): into the kernel under the
 * invariant, then up to `allowance` (promised) bytes into the overflow. A WAITING server
 * takes bytes into the overflow only. Returns the count or -1.
 */
static ssize_t vchan__take(struct libvchan *c, int st, const char *p, size_t n,
			   size_t allowance)
{
	size_t taken = 0, extra;

	if (st == VCHAN_WAITING) {
		extra = vchan__ovf_reserve(c, n);
		vchan__ovf_append(c, p, extra);
		return (ssize_t)extra;
	}
	if (c->ovf_len && vchan__flush_overflow(c, true, NULL) < 0)
		return -1;
	if (!c->ovf_len) {
		ssize_t k = vchan__push(c, p, n);

		if (k < 0)
			return -1;
		taken = (size_t)k;
	}
	if (allowance > taken && n > taken) {
		extra = vchan__ovf_reserve(c, vchan__min(n - taken, allowance - taken));
		vchan__ovf_append(c, p + taken, extra);
		taken += extra;
	}
	return (ssize_t)taken;
}

static void vchan__spend_promise(struct libvchan *c, size_t taken)
{
	c->promised = c->promised > taken ? c->promised - taken : 0;
}

/* buffer_space() of a connected channel (wlock held). */
static size_t vchan__measure_space(struct libvchan *c)
{
	size_t room = vchan__min(c->write_ring, vchan__room(c));

	return room > c->ovf_len ? room - c->ovf_len : 0;
}

/*
 * The blocking remainder of a write: like a plain socket (DESIGN.md "waiting regime"), the
 * kernel takes what it can, beyond W if need be, and we sleep on POLLOUT when it is full;
 * then the invariant U <= W is restored before returning. 0 or -1.
 */
static int vchan__write_waiting(struct libvchan *c, const char *p, size_t n)
{
	size_t pos = 0;
	int r, st;

	for (;;) {
		st = vchan__load(&c->state);
		if (st == VCHAN_WAITING) {
			vchan__arm(c); /* a write that has to wait asks for the consumption event */
			if (vchan__wait_connected(c) < 0)
				return -1;
			continue;
		}
		if (st == VCHAN_DISCONNECTED) {
			errno = EPIPE;
			return -1;
		}
		vchan__lock(&c->wlock);
		r = vchan__flush_overflow(c, false, NULL);
		if (r == 0 && !c->ovf_len && pos < n) {
			ssize_t k = vchan__sendk(c, p + pos, n - pos);

			if (k < 0)
				r = -1;
			else
				pos += (size_t)k;
		}
		/* done, and certainly below W: no need to wait for the invariant */
		if (r == 0 && pos == n && !c->ovf_len && c->u_est <= c->w) {
			vchan__unlock(&c->wlock);
			return 0;
		}
		vchan__unlock(&c->wlock);
		if (r < 0)
			return -1;
		/* the kernel is full, or we went above W: wait until U <= W */
		vchan__arm(c);
		r = vchan__poll1(c->sock, POLLOUT | POLLRDHUP, -1);
		if (vchan__load(&c->closed)) {
			errno = EBADF;
			return -1;
		}
		if (r < 0)
			return -1;
		if (r & POLL_GONE) {
			vchan__set_disconnected(c);
			if (pos == n)
				return 0; /* all accepted; the next call reports the loss */
			errno = EPIPE;
			return -1;
		}
		if (pos == n && (r & POLLOUT)) {
			vchan__lock(&c->wlock);
			if (!c->ovf_len) {
				if (c->u_est > c->w)
					c->u_est = c->w; /* writable: U <= W */
				vchan__unlock(&c->wlock);
				return 0;
			}
			vchan__unlock(&c->wlock);
		}
	}
}

/* Prologue of the data calls: 0 connected (or disconnected), 1 return 0 now, -1 error. */
static int vchan__ready_for_data(struct libvchan *c)
{
	int st;

	while ((st = vchan__settle(c)) == VCHAN_WAITING) {
		if (c->is_server)
			return 2; /* a waiting server buffers writes; reads have nothing */
		if (!vchan__load(&c->blocking))
			return 1;
		if (vchan__wait_connected(c) < 0)
			return -1;
	}
	if (st == VCHAN_DISCONNECTED && c->sock < 0) {
		errno = EPIPE; /* never connected (failed async init): nothing to read or write */
		return -1;
	}
	return 0;
}

/*
 * Prologue of write and send: size checks, a reference on the handle (the caller drops it
 * with vchan__leave), the channel ready for data (a WAITING server buffers). Returns 1 to
 * go on, else the call's result (0 or -1 with errno), with no reference held.
 */
static int vchan__write_prologue(struct libvchan *c, size_t size)
{
	int r;

	if (size == 0)
		return 0;
	if (size > INT_MAX) {
		errno = EINVAL;
		return -1;
	}
	if (vchan__enter(c))
		return -1;
	r = vchan__ready_for_data(c);
	if (r == 1 || r < 0) {
		vchan__leave(c);
		return r < 0 ? -1 : 0;
	}
	return 1;
}

VCHAN_API int libvchan_write(libvchan_t *c, const void *data, size_t size)
{
	const char *p = data;
	ssize_t taken;
	bool blocking;
	size_t n = size;
	int r, st;

	r = vchan__write_prologue(c, size);
	if (r != 1)
		return r;
	blocking = vchan__load(&c->blocking);
	if (!blocking)
		n = vchan__min(n, c->write_ring);
	vchan__lock(&c->wlock);
	st = vchan__load(&c->state);
	if (st == VCHAN_DISCONNECTED) {
		vchan__unlock(&c->wlock);
		vchan__leave(c);
		errno = EPIPE;
		return -1;
	}
	if (blocking && st == VCHAN_CONNECTED && !c->ovf_len &&
	    (c->u_est + vchan__tsz(n) <= c->w || !c->promised)) {
		/*
		 * Blocking, nothing queued, no promise to keep: everything goes to the kernel.
		 * One send() if it fits below W, else the waiting regime (no bounded partial
		 * send first). Bytes promised by buffer_space() take the path below, which
		 * queues what the kernel will not take instead of waiting.
		 */
		taken = 0;
		if (c->u_est + vchan__tsz(n) <= c->w || vchan__tsz(n) <= vchan__room_raw(c))
			taken = vchan__sendk(c, p, n);
		vchan__spend_promise(c, n);
	} else {
		taken = vchan__take(c, st, p, n, c->promised);
		if (taken > 0)
			vchan__spend_promise(c, (size_t)taken);
	}
	if (taken >= 0 && !blocking && (size_t)taken < size) {
		/* short: ask for the consumption event, then look once more (DESIGN.md) */
		vchan__unlock(&c->wlock);
		vchan__arm(c);
		vchan__lock(&c->wlock);
		st = vchan__load(&c->state);
		if (st != VCHAN_DISCONNECTED && (size_t)taken < n) {
			ssize_t more = vchan__take(c, st, p + taken, n - (size_t)taken, c->promised);

			if (more > 0) {
				vchan__spend_promise(c, (size_t)more);
				taken += more;
			}
		}
	}
	vchan__unlock(&c->wlock);
	if (taken >= 0 && blocking && (size_t)taken < n &&
	    vchan__write_waiting(c, p + taken, n - (size_t)taken) < 0)
		taken = -1;
	else if (taken >= 0 && blocking)
		taken = (ssize_t)n;
	vchan__leave(c);
	return (int)taken;
}

/*
 * send() without waiting: 1 if `size` bytes fit and were taken (*taken: the count
 * accepted, or -1 with errno), 0 if they do not fit now.
 */
static int vchan__send_now(struct libvchan *c, const char *p, size_t size, ssize_t *taken)
{
	size_t space;
	int st;

	*taken = -1;
	vchan__lock(&c->wlock);
	st = vchan__load(&c->state);
	if (st == VCHAN_DISCONNECTED) {
		errno = EPIPE;
		goto done;
	}
	if (st == VCHAN_CONNECTED && !c->ovf_len && size <= c->write_ring &&
	    c->u_est + vchan__tsz(size) <= c->w) {
		space = size; /* certain without asking the kernel */
	} else if (st == VCHAN_WAITING) {
		space = c->write_ring - c->ovf_len;
	} else {
		if (c->ovf_len && (vchan__poll_now(c->sock, POLLRDHUP) & POLL_GONE)) {
			vchan__set_disconnected(c);
			errno = EPIPE;
			goto done;
		}
		/* a promise from buffer_space() holds even if the kernel is full now */
		space = vchan__measure_space(c);
		if (space < c->promised)
			space = c->promised;
	}
	if (size > space) {
		vchan__unlock(&c->wlock);
		return 0;
	}
	*taken = vchan__take(c, st, p, size, space);
	if (*taken > 0)
		vchan__spend_promise(c, (size_t)*taken);
done:
	vchan__unlock(&c->wlock);
	return 1;
}

VCHAN_API int libvchan_send(libvchan_t *c, const void *data, size_t size)
{
	const char *p = data;
	ssize_t taken;
	int r;

	r = vchan__write_prologue(c, size);
	if (r != 1)
		return r;
	r = vchan__send_now(c, p, size, &taken);
	if (r == 0 && !vchan__load(&c->blocking)) {
		/* short: ask for the consumption event, then look once more (DESIGN.md) */
		vchan__arm(c);
		r = vchan__send_now(c, p, size, &taken);
		if (r == 0)
			taken = 0;
	} else if (r == 0) {
		taken = -1;
		if (size > c->write_ring)
			errno = EMSGSIZE;
		else if (vchan__write_waiting(c, p, size) == 0)
			taken = (ssize_t)size;
	}
	if (r == 1 && taken >= 0 && (size_t)taken < size) {
		/* the space was honest, so everything was taken; finish in the (rare) other case */
		if (vchan__write_waiting(c, p + taken, size - (size_t)taken) < 0)
			taken = -1;
		else
			taken = (ssize_t)size;
	}
	vchan__leave(c);
	return (int)taken;
}

VCHAN_API int libvchan_buffer_space(libvchan_t *c)
{
	size_t space = 0;
	int st;

	if (vchan__enter(c))
		return 0;
	vchan__settle(c);
	/* buffer_space() asks for the consumption event (Xen), before measuring */
	vchan__arm(c);
	vchan__lock(&c->wlock);
	st = vchan__load(&c->state);
	if (st == VCHAN_WAITING)
		space = c->is_server ? c->write_ring - c->ovf_len : 0;
	else if (st == VCHAN_CONNECTED)
		space = vchan__measure_space(c);
	c->promised = space;
	vchan__unlock(&c->wlock);
	vchan__leave(c);
	return (int)space;
}

/* ------------------------------------------------------------------ reads */

/* recv() from sock's kernel queue, counted for notification (vchan__consumed). */
static ssize_t vchan__krecv(struct libvchan *c, void *buf, size_t len, int flags)
{
	ssize_t r = vchan__recv_flags(c->sock, buf, len, flags);

	if (r > 0)
		vchan__consumed(c, (size_t)r);
	return r;
}

/* A zero-byte recv: EOF, or our own close (shutdown) from another thread. */
static int vchan__eof(struct libvchan *c)
{
	if (vchan__load(&c->closed)) {
		errno = EBADF;
		return -1;
	}
	vchan__set_disconnected(c);
	errno = EPIPE;
	return -1;
}

/* Wait for data or a hang-up outside the lock. 0 or -1/EBADF. */
static int vchan__wait_readable(struct libvchan *c)
{
	int r = vchan__poll1(c->sock, POLLIN | POLLRDHUP, -1);

	if (vchan__load(&c->closed)) {
		errno = EBADF;
		return -1;
	}
	return r < 0 ? -1 : 0;
}

/* stash_len is also read without rlock, as a hint, by blocking reads. */
static void vchan__set_stash_len(struct libvchan *c, size_t n)
{
	__atomic_store_n(&c->stash_len, n, __ATOMIC_RELAXED);
}

static bool vchan__stash_empty_hint(struct libvchan *c)
{
	return __atomic_load_n(&c->stash_len, __ATOMIC_RELAXED) == 0;
}

/*
 * A blocking read or recv that found the stash empty sleeps in the kernel without rlock.
 * wait()'s prefetch must not take bytes from under it (they would be delivered after the
 * ones it gets): each side announces itself, then checks the other (sequentially
 * consistent, so at least one of them sees the other and keeps out).
 */
static bool vchan__kread_enter(struct libvchan *c)
{
	__atomic_add_fetch(&c->kreaders, 1, __ATOMIC_SEQ_CST);
	if (!__atomic_load_n(&c->prefetching, __ATOMIC_SEQ_CST) && vchan__stash_empty_hint(c))
		return true;
	__atomic_sub_fetch(&c->kreaders, 1, __ATOMIC_SEQ_CST);
	return false;
}

static void vchan__kread_leave(struct libvchan *c)
{
	__atomic_sub_fetch(&c->kreaders, 1, __ATOMIC_SEQ_CST);
}

static size_t vchan__stash_take(struct libvchan *c, char *out, size_t n)
{
	n = vchan__min(n, c->stash_len);
	memcpy(out, c->stash + c->stash_off, n);
	vchan__set_stash_len(c, c->stash_len - n);
	c->stash_off = c->stash_len ? c->stash_off + n : 0;
	return n;
}

VCHAN_API int libvchan_read(libvchan_t *c, void *data, size_t size)
{
	ssize_t r;
	int ret;

	if (size == 0)
		return 0;
	if (vchan__enter(c))
		return -1;
	ret = vchan__ready_for_data(c);
	while (ret == 2) { /* a waiting server: nothing to read before the client */
		if (!vchan__load(&c->blocking)) {
			vchan__leave(c);
			return 0;
		}
		if (vchan__wait_listener(c) < 0) {
			vchan__leave(c);
			return -1;
		}
		ret = vchan__ready_for_data(c);
	}
	if (ret != 0) {
		vchan__leave(c);
		return ret < 0 ? -1 : 0;
	}
	size = vchan__min(size, c->read_ring);
	if (vchan__load(&c->blocking) && vchan__kread_enter(c)) {
		/* one recv() that sleeps in the kernel until data, EOF or our close() */
		r = vchan__krecv(c, data, size, 0);
		vchan__kread_leave(c);
		if (r > 0)
			ret = (int)r;
		else if (r == 0 || errno == ECONNRESET)
			ret = vchan__eof(c);
		else
			ret = -1;
		vchan__leave(c);
		return ret;
	}
	vchan__lock(&c->rlock);
	for (;;) {
		if (c->stash_len) {
			size_t got = vchan__stash_take(c, data, size);

			/* more asked than wait() prefetched: what the kernel has, without waiting */
			if (got == VCHAN__PREFETCH_MAX && got < size) {
				r = vchan__krecv(c, (char *)data + got, size - got, MSG_DONTWAIT);
				if (r > 0)
					got += (size_t)r;
			}
			ret = (int)got;
			break;
		}
		r = vchan__krecv(c, data, size, MSG_DONTWAIT);
		if (r > 0) {
			ret = (int)r;
			break;
		}
		if (r == 0 || errno == ECONNRESET) {
			ret = vchan__eof(c);
			break;
		}
		if (errno != EAGAIN && errno != EWOULDBLOCK) {
			ret = -1;
			break;
		}
		if (!vchan__load(&c->blocking)) {
			ret = 0;
			break;
		}
		vchan__unlock(&c->rlock);
		if (vchan__wait_readable(c) < 0) {
			vchan__leave(c);
			return -1;
		}
		vchan__lock(&c->rlock);
	}
	vchan__unlock(&c->rlock);
	vchan__leave(c);
	return ret;
}

static int vchan__stash_reserve(struct libvchan *c, size_t need);

/*
 * wait()'s measurement before its harvest (DESIGN.md "Notification", prefetch): one recv()
 * moves what is queued (up to VCHAN__PREFETCH_MAX) into the stash. A recv() that took less
 * than it could emptied the queue, so seen = consumed, with no FIONREAD; and the read or
 * recv that follows wait() is served from the stash with no system call. Falls back to
 * seen = consumed + FIONREAD when the stash is busy or full, or a blocking read sleeps in
 * the kernel. Returns whether it took bytes wait() had not seen: they are this wait()'s event
 * (the harvest cannot report them any more: epoll re-polls the item, and EPOLLIN no longer
 * holds once the queue is empty).
 */
bool vchan__prefetch(struct libvchan *c, int sock)
{
	size_t k, old = vchan__load(&c->seen), room = 0;
	ssize_t r = -1;
	int q = 0;

	if (pthread_mutex_trylock(&c->rlock) == 0) {
		__atomic_store_n(&c->prefetching, 1, __ATOMIC_SEQ_CST);
		if (!__atomic_load_n(&c->kreaders, __ATOMIC_SEQ_CST) &&
		    vchan__stash_reserve(c, c->read_ring) == 0) {
			if (c->stash_off && c->stash_len) {
				memmove(c->stash, c->stash + c->stash_off, c->stash_len);
				c->stash_off = 0;
			} else if (!c->stash_len) {
				c->stash_off = 0;
			}
			room = vchan__min(c->stash_cap - c->stash_len, VCHAN__PREFETCH_MAX);
		}
		if (room) {
			r = vchan__recv_flags(sock, c->stash + c->stash_len, room, MSG_DONTWAIT);
			if (r > 0) {
				vchan__set_stash_len(c, c->stash_len + (size_t)r);
				__atomic_add_fetch(&c->consumed, (size_t)r, __ATOMIC_ACQ_REL);
			}
			/* short (or EOF, or nothing queued): the queue is empty */
			if ((r >= 0 && (size_t)r < room) ||
			    (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)))
				room = 0;
			else
				room = 1;
		} else {
			room = 1;
		}
		k = vchan__load(&c->consumed);
		if (room) {
			q = vchan__ioctl_int(sock, FIONREAD);
			if (q < 0)
				q = 0;
		}
		vchan__store(&c->seen, k + (size_t)q);
		vchan__store(&c->prefetching, 0);
		vchan__unlock(&c->rlock);
		return r > 0 && k > old;
	}
	k = vchan__load(&c->consumed);
	q = vchan__ioctl_int(sock, FIONREAD);
	vchan__store(&c->seen, k + (size_t)(q > 0 ? q : 0));
	return false;
}

/* The stash can hold `need` bytes (rlock held). 0 or -1/ENOMEM. */
static int vchan__stash_reserve(struct libvchan *c, size_t need)
{
	char *p;

	if (need < c->read_ring)
		need = c->read_ring;
	if (c->stash && c->stash_cap >= need)
		return 0;
	p = realloc(c->stash, need);
	if (!p) {
		errno = ENOMEM;
		return -1;
	}
	c->stash = p;
	c->stash_cap = need;
	return 0;
}

/* Copy n available bytes (stash first, then the kernel) into out (rlock held). */
static int vchan__deliver(struct libvchan *c, char *out, size_t n)
{
	size_t got = vchan__stash_take(c, out, n);
	ssize_t r;

	while (got < n) {
		r = vchan__krecv(c, out + got, n - got, MSG_DONTWAIT);
		if (r > 0) {
			got += (size_t)r;
		} else if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			/*
			 * FIONREAD counted these bytes; only a concurrent reader can have
			 * taken them (then wait for more; rlock is held: not interruptible)
			 */
			(void)vchan__poll1_locked(c->sock, POLLIN | POLLRDHUP, -1);
		} else {
			/* cannot complete: put what we consumed back, nothing is lost */
			if (vchan__stash_reserve(c, got) == 0) {
				memcpy(c->stash, out, got);
				c->stash_off = 0;
				vchan__set_stash_len(c, got);
			}
			return r == 0 ? vchan__eof(c) : -1;
		}
	}
	return (int)n;
}

/* Move queued bytes into the stash, as many as it holds (rlock held). */
static int vchan__fill_stash(struct libvchan *c, size_t queued)
{
	ssize_t r;

	if (vchan__stash_reserve(c, c->read_ring) < 0)
		return -1;
	if (c->stash_off) {
		memmove(c->stash, c->stash + c->stash_off, c->stash_len);
		c->stash_off = 0;
	}
	queued = vchan__min(queued, c->stash_cap - c->stash_len);
	if (queued == 0)
		return 0;
	r = vchan__krecv(c, c->stash + c->stash_len, queued, MSG_DONTWAIT);
	if (r > 0)
		vchan__set_stash_len(c, c->stash_len + (size_t)r);
	return 0;
}

/* Put bytes that were consumed ahead of the stash's contents (rlock held). */
static int vchan__stash_prepend(struct libvchan *c, const char *p, size_t n)
{
	if (vchan__stash_reserve(c, c->stash_len + n) < 0)
		return -1;
	memmove(c->stash + n, c->stash + c->stash_off, c->stash_len);
	memcpy(c->stash, p, n);
	c->stash_off = 0;
	vchan__set_stash_len(c, c->stash_len + n);
	return 0;
}

VCHAN_API int libvchan_recv(libvchan_t *c, void *data, size_t size)
{
	char *out = data;
	int ret, q;
	ssize_t r;
	bool gone;

	if (size == 0)
		return 0;
	if (size > INT_MAX) {
		errno = EINVAL;
		return -1;
	}
	if (vchan__enter(c))
		return -1;
	ret = vchan__ready_for_data(c);
	while (ret == 2) {
		if (!vchan__load(&c->blocking)) {
			vchan__leave(c);
			return 0;
		}
		if (size > c->read_ring) {
			vchan__leave(c);
			errno = EMSGSIZE;
			return -1;
		}
		if (vchan__wait_listener(c) < 0) {
			vchan__leave(c);
			return -1;
		}
		ret = vchan__ready_for_data(c);
	}
	if (ret != 0) {
		vchan__leave(c);
		return ret < 0 ? -1 : 0;
	}
	if (vchan__load(&c->blocking) && size <= c->read_ring && vchan__kread_enter(c)) {
		/* one recv() that sleeps in the kernel until all `size` bytes are there */
		r = vchan__krecv(c, out, size, MSG_WAITALL);
		vchan__kread_leave(c);
		if (r == (ssize_t)size) {
			vchan__leave(c);
			return (int)size;
		}
		if (r < 0 && errno == EINTR) {
			/* an embedding's hook ended the wait (internal.h): nothing was taken */
			vchan__leave(c);
			return -1;
		}
		/* EOF, reset, our close() or a signal came first: keep what arrived */
		vchan__lock(&c->rlock);
		if (r > 0 && vchan__stash_prepend(c, out, (size_t)r) < 0) {
			ret = -1;
			goto out;
		}
		if (vchan__stash_reserve(c, c->read_ring) < 0) {
			ret = -1;
			goto out;
		}
		if (r > 0 && vchan__intr_hook) {
			/*
			 * A short MSG_WAITALL may be a signal, which an embedding must see
			 * (internal.h): its hook runs with no lock held; the bytes are stashed.
			 */
			vchan__unlock(&c->rlock);
			errno = EINTR;
			if (!vchan__intr_retry()) {
				vchan__leave(c);
				return -1;
			}
			vchan__lock(&c->rlock);
		}
		goto slow;
	}
	vchan__lock(&c->rlock);
	if (c->stash_len >= size) {
		/* wait() took the bytes already (prefetch): no system call */
		ret = (int)vchan__stash_take(c, out, size);
		goto out;
	}
	if (vchan__stash_reserve(c, c->read_ring) < 0) {
		ret = -1;
		goto out;
	}
	if (!c->stash_len && size <= c->read_ring) {
		/* common case: everything is already queued */
		r = vchan__krecv(c, out, size, MSG_DONTWAIT);
		if (r == (ssize_t)size) {
			ret = (int)size;
			goto out;
		}
		if (r > 0) {
			memcpy(c->stash, out, (size_t)r);
			c->stash_off = 0;
			vchan__set_stash_len(c, (size_t)r);
		} else if (r == 0 || errno == ECONNRESET) {
			ret = vchan__eof(c);
			goto out;
		} else if (errno != EAGAIN && errno != EWOULDBLOCK) {
			ret = -1;
			goto out;
		}
	}
slow:
	for (;;) {
		/* the peer-gone check comes before the final check for data */
		gone = vchan__load(&c->state) == VCHAN_DISCONNECTED ||
		       (vchan__poll_now(c->sock, POLLRDHUP) & POLL_GONE);
		q = vchan__ioctl_int(c->sock, FIONREAD);
		if (q < 0)
			q = 0;
		if (c->stash_len + (size_t)q >= size) {
			ret = vchan__deliver(c, out, size);
			break;
		}
		if (vchan__load(&c->closed)) {
			errno = EBADF;
			ret = -1;
			break;
		}
		if (gone) {
			vchan__set_disconnected(c);
			errno = EPIPE;
			ret = -1;
			break;
		}
		/*
		 * Not enough yet. Move what is queued to the stash (up to the read ring), also
		 * when returning 0: every write costs its writer hundreds of bytes of send
		 * buffer, so a writer of small chunks can be blocked long before `size` bytes
		 * are queued, and only draining the queue lets it go on (else both ends wait
		 * for each other).
		 */
		if (vchan__fill_stash(c, (size_t)q) < 0) {
			ret = -1;
			break;
		}
		if (!vchan__load(&c->blocking)) {
			ret = 0;
			break;
		}
		if (size > c->read_ring) {
			errno = EMSGSIZE;
			ret = -1;
			break;
		}
		vchan__unlock(&c->rlock);
		if (vchan__wait_readable(c) < 0) {
			vchan__leave(c);
			return -1;
		}
		vchan__lock(&c->rlock);
	}
out:
	vchan__unlock(&c->rlock);
	vchan__leave(c);
	return ret;
}

VCHAN_API int libvchan_data_ready(libvchan_t *c)
{
	size_t n = 0;
	int q;

	if (vchan__enter(c))
		return 0;
	if (vchan__settle(c) != VCHAN_WAITING) {
		vchan__lock(&c->rlock);
		q = vchan__ioctl_int(c->sock, FIONREAD);
		n = c->stash_len + (q > 0 ? (size_t)q : 0);
		vchan__unlock(&c->rlock);
	}
	vchan__leave(c);
	return (int)vchan__min(n, c->read_ring);
}
