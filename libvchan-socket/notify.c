/*
 * notify.c - handle lifetime, states, notification: wait, is_open, close.
 *
 * SPDX-License-Identifier: MIT
 * Copyright (c) 2026 The vchan developers
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "internal.h"

/* Close every descriptor and free the memory (nobody else can reach the handle). */
static void vchan__free(struct libvchan *c, bool destroy_locks)
{
	vchan__close_fd(c->sock);
	vchan__close_fd(c->listen_fd);
	vchan__close_fd(c->ino_fd);
	vchan__close_fd(c->tfd);
	vchan__close_fd(c->epfd);
	free(c->ovf);
	free(c->stash);
	if (destroy_locks) {
		pthread_mutex_destroy(&c->slock);
		pthread_mutex_destroy(&c->wlock);
		pthread_mutex_destroy(&c->rlock);
	}
	free(c);
}

void vchan__ref(struct libvchan *c)
{
	__atomic_add_fetch(&c->refs, 1, __ATOMIC_RELAXED);
}

void vchan__unref(struct libvchan *c)
{
	if (__atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) == 0) {
		int saved = errno;

		vchan__free(c, true);
		errno = saved;
	}
}

/* Every API call that can block or use a descriptor runs between enter and leave. */
int vchan__enter(struct libvchan *c)
{
	vchan__ref(c);
	if (vchan__load(&c->closed)) {
		vchan__unref(c);
		errno = EBADF;
		return -1;
	}
	return 0;
}

void vchan__leave(struct libvchan *c)
{
	vchan__unref(c);
}

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

VCHAN_API int libvchan_wait(libvchan_t *c)
{
	struct epoll_event ev[4];
	int r;

	if (vchan__enter(c))
		return -1;
	for (;;) {
		do
			r = epoll_wait(c->epfd, ev, 4, -1);
		while (r < 0 && errno == EINTR);
		if (vchan__load(&c->closed)) {
			errno = EBADF;
			r = -1;
			break;
		}
		if (r < 0)
			break;
		r = 0;
		if (!c->is_server || vchan__load(&c->state) != VCHAN_WAITING)
			break;
		/* a waiting server's readiness means a client connected: take it */
		vchan__try_accept(c, true);
		if (vchan__load(&c->state) != VCHAN_WAITING)
			break;
	}
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

VCHAN_API void libvchan_close(libvchan_t *c)
{
	int saved = errno;

	if (!c)
		return;
	if (getpid() != c->pid) {
		/*
		 * Inherited through fork(): the parent owns the channel. Close our copies of
		 * the descriptors and free our copy of the memory; no shutdown, no unlink. The
		 * locks may have been held by a parent thread at fork time: leave them alone.
		 */
		vchan__free(c, false);
		errno = saved;
		return;
	}
	/*
	 * A client already in a waiting server's backlog has connected, as far as it knows:
	 * take it, so that the bytes written before close() reach it like on any channel.
	 */
	vchan__settle(c);
	if (__atomic_exchange_n(&c->closed, 1, __ATOMIC_ACQ_REL)) {
		errno = saved;
		return; /* double close: the caller's bug, but do no harm */
	}
	vchan__close_wake(c);
	/*
	 * Notification no longer matters, so the kernel may take the overflow beyond W (it
	 * has room up to 4 W): usually no pusher has to outlive close().
	 */
	vchan__lock(&c->wlock);
	if (c->ovf_len && vchan__load(&c->state) == VCHAN_CONNECTED)
		(void)vchan__flush_overflow(c, false, NULL);
	vchan__unlock(&c->wlock);
	vchan__unref(c);
	errno = saved;
}
