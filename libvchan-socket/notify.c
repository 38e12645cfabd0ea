/*
 * notify.c - states and notification: wait, is_open, set_blocking, fd_for_select.
 *
 * SPDX-License-Identifier: MIT
 * Copyright (c) 2026 The vchan developers
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "internal.h"

/* CONNECTED -> DISCONNECTED (final). */
void vchan__set_disconnected(struct libvchan *c)
{
	int expected = VCHAN_CONNECTED;

	__atomic_compare_exchange_n(&c->state, &expected, VCHAN_DISCONNECTED, false,
				    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

/* Common prologue: a WAITING server takes a pending client; returns the state. */
int vchan__settle(struct libvchan *c)
{
	int st = vchan__load(&c->state);

	if (st == VCHAN_WAITING && c->is_server) {
		vchan__try_accept(c, false);
		st = vchan__load(&c->state);
	}
	return st;
}

/* A blocking data call on a channel that is not connected yet waits until it is. */
int vchan__wait_connected(struct libvchan *c)
{
	if (!c->is_server)
		return vchan__finish(c, true) < 0 ? -1 : 0;
	return vchan__wait_listener(c);
}

/* ------------------------------------------------------------------ notification */

/* sock's registration in epfd, with or without EPOLLOUT (nlock held). */
static void vchan__set_mask(struct libvchan *c, bool out)
{
	struct epoll_event ev = { .events = VCHAN__EPOLL_SOCK | (out ? EPOLLOUT : 0),
				  .data.fd = c->sock };

	(void)epoll_ctl(c->epfd, EPOLL_CTL_MOD, c->sock, &ev);
	c->mask_out = out;
}

/* sock, if the channel is connected (or was): -1 while WAITING or connecting. */
static int vchan__sock_now(struct libvchan *c)
{
	return vchan__load(&c->state) == VCHAN_WAITING ? -1 : c->sock;
}

/* seen = consumed + FIONREAD; consumed is loaded first, so a concurrent read can only
 * make seen smaller (a spurious event later), never larger (a missed one). */
static void vchan__mark_seen(struct libvchan *c, int sock)
{
	size_t k = vchan__load(&c->consumed);
	int q = vchan__ioctl_int(sock, FIONREAD);

	vchan__store(&c->seen, k + (size_t)(q > 0 ? q : 0));
}

static int vchan__epoll_now(struct libvchan *c, struct epoll_event *ev, int n, int timeout)
{
	int r;

	do
		r = epoll_wait(c->epfd, ev, n, timeout);
	while (r < 0 && errno == EINTR && (timeout == 0 || vchan__intr_retry()));
	return r;
}

/*
 * A call other than wait() consumed an event wait() has not seen: keep the fd readable
 * until wait(). EPOLL_CTL_MOD with EPOLLOUT re-polls the item and queues it, and as the
 * socket is writable (U <= W) it stays queued. `latched` alone makes wait() return at once
 * (a WAITING server that refused a peer has no sock to register).
 */
void vchan__latch(struct libvchan *c)
{
	int sock;

	if (__atomic_exchange_n(&c->latched, 1, __ATOMIC_ACQ_REL))
		return;
	sock = vchan__sock_now(c);
	if (sock < 0)
		return;
	vchan__lock(&c->nlock);
	vchan__set_mask(c, true);
	vchan__unlock(&c->nlock);
}

/*
 * Ask to be told of the peer's next consumption (Xen's VCHAN_NOTIFY_READ), one-shot. The
 * caller measures its space after this, so a consumption between the MOD and the harvest
 * of its immediate edge is reflected in what the call returns.
 */
void vchan__arm(struct libvchan *c)
{
	struct epoll_event ev[4];
	bool latch = false;
	int sock, n;

	/*
	 * Already armed. If the fd is readable the request may have fired (wait() not called
	 * yet): this newer one must survive the wait() that clears the older. If it is not,
	 * the older has not fired and the same consumption answers both.
	 */
	if (vchan__load(&c->armed)) {
		if (vchan__poll_now(c->epfd, POLLIN) & POLLIN)
			vchan__store(&c->rearm, 1);
		return;
	}
	vchan__lock(&c->nlock);
	if (vchan__load(&c->armed)) {
		vchan__unlock(&c->nlock);
		vchan__arm(c);
		return;
	}
	vchan__store(&c->armed, 1);
	sock = vchan__sock_now(c);
	if (sock >= 0 && !c->mask_out) {
		__atomic_add_fetch(&c->arm_seq, 1, __ATOMIC_ACQ_REL);
		vchan__set_mask(c, true);
		n = vchan__epoll_now(c, ev, 4, 0);
		for (int i = 0; i < n; i++) {
			uint32_t e = ev[i].events;

			/* ours is the bare EPOLLOUT edge; anything else was an event to keep */
			if (ev[i].data.fd != sock || (e & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
				latch = true;
			else if (e & EPOLLIN) {
				int q = vchan__ioctl_int(sock, FIONREAD);
				size_t k = vchan__load(&c->consumed);

				if (k + (size_t)(q > 0 ? q : 0) > vchan__load(&c->seen))
					latch = true;
			}
		}
		__atomic_add_fetch(&c->arm_seq, 1, __ATOMIC_ACQ_REL);
	}
	vchan__unlock(&c->nlock);
	if (latch)
		vchan__latch(c);
}

/*
 * wait() (DESIGN.md "Notification", steps 1 to 4): the only call that clears readiness.
 */
VCHAN_API int libvchan_wait(libvchan_t *c)
{
	struct epoll_event ev[4];
	bool settle, blocked, fresh = false;
	unsigned seq;
	int r = 0, n, sock;

	if (vchan__enter(c))
		return -1;
	/* 1. a latched event: do not block */
	settle = __atomic_exchange_n(&c->latched, 0, __ATOMIC_ACQ_REL);
	if (settle && c->is_server && vchan__load(&c->state) == VCHAN_WAITING)
		vchan__try_accept(c, true);
	while (!settle) {
		/* 2. harvest, blocking if nothing is there */
		seq = vchan__load(&c->arm_seq);
		sock = vchan__sock_now(c);
		if (sock >= 0)
			fresh = vchan__prefetch(c, sock); /* seen, measured by taking the queue */
		n = vchan__epoll_now(c, ev, 4, 0);
		blocked = n == 0 && !fresh;
		if (blocked) {
			n = vchan__epoll_now(c, ev, 4, -1);
			settle = true; /* seen predates this harvest */
		}
		if (vchan__load(&c->closed)) {
			errno = EBADF;
			r = -1;
			goto out;
		}
		if (n < 0) {
			r = -1;
			goto out;
		}
		if (c->is_server && vchan__load(&c->state) == VCHAN_WAITING) {
			/* a waiting server's readiness means a client connected: take it */
			vchan__try_accept(c, true);
			if (vchan__load(&c->state) == VCHAN_WAITING) {
				/*
				 * A refused peer. If the fd was readable when wait() was
				 * called, the caller saw that event: return, still WAITING
				 * (SPEC section 5). If wait() slept, keep sleeping: qrexec
				 * takes a return for "connected".
				 */
				settle = __atomic_exchange_n(&c->latched, 0, __ATOMIC_ACQ_REL) &&
					 !blocked;
				if (!settle)
					continue;
				break;
			}
			settle = true; /* the fresh registration may report at once */
			break;
		}
		sock = vchan__sock_now(c);
		/* a request made since the last wait() keeps the request armed */
		if (sock >= 0 && vchan__load(&c->armed) &&
		    !__atomic_exchange_n(&c->rearm, 0, __ATOMIC_ACQ_REL) &&
		    seq == vchan__load(&c->arm_seq) && !(seq & 1) && !fresh) {
			/* (fresh: the data's EPOLLIN was taken with it, so a bare EPOLLOUT is
			 * not proof of a consumption: stay armed, as with EPOLLIN|EPOLLOUT) */
			for (int i = 0; i < n; i++) {
				uint32_t e = ev[i].events;

				/* exactly EPOLLOUT: the requested consumption (one-shot) */
				if (ev[i].data.fd == sock && (e & EPOLLOUT) &&
				    !(e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) {
					vchan__store(&c->armed, 0);
					settle = true;
				}
			}
		}
		break;
	}
	/* 3. EPOLLOUT out of the mask if nothing needs it; leave nothing of ours queued */
	if (settle) {
		sock = vchan__sock_now(c);
		if (sock >= 0) {
			vchan__lock(&c->nlock);
			if (c->mask_out && !vchan__load(&c->armed) && !vchan__load(&c->latched))
				vchan__set_mask(c, false);
			vchan__unlock(&c->nlock);
			vchan__mark_seen(c, sock);
		}
		/* a latch made meanwhile by another thread keeps the readiness it queued */
		if (!vchan__load(&c->latched))
			(void)vchan__epoll_now(c, ev, 4, 0);
		/*
		 * This wait() reports the connection. Bytes that came with it are a separate
		 * event (on Xen the peer's init and its first write each notify): keep them
		 * readable for the next wait(). Checked after the harvest, so bytes arriving
		 * later have an edge of their own.
		 */
		if (sock >= 0 && __atomic_exchange_n(&c->conn_event, 0, __ATOMIC_ACQ_REL) &&
		    vchan__ioctl_int(sock, FIONREAD) > 0)
			vchan__latch(c);
	}
out:
	vchan__leave(c);
	return r;
}

VCHAN_API EVTCHN libvchan_fd_for_select(libvchan_t *c)
{
	return c->epfd;
}

VCHAN_API int libvchan_is_open(libvchan_t *c)
{
	int st;

	if (vchan__enter(c))
		return VCHAN_DISCONNECTED;
	st = vchan__settle(c);
	if (st == VCHAN_CONNECTED &&
	    (vchan__poll_now(c->sock, POLLRDHUP) & (POLLRDHUP | POLLHUP | POLLERR)))
		vchan__set_disconnected(c);
	st = vchan__load(&c->state);
	vchan__leave(c);
	return st;
}

VCHAN_API void libvchan_set_blocking(libvchan_t *c, bool blocking)
{
	vchan__store(&c->blocking, blocking ? 1 : 0);
}
