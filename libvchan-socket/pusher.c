/*
 * pusher.c - the helper thread that delivers overflow bytes with no call from the writer.
 *
 * SPDX-License-Identifier: MIT
 * Copyright (c) 2026 The vchan developers
 *
 * A pusher exists only while the overflow holds bytes (DESIGN.md). It holds a reference
 * on the handle, so after libvchan_close() it keeps the connection open until the bytes
 * are delivered or the peer is gone; the last reference closes it.
 *
 * It waits for space with its own edge-triggered epoll instance on the connection
 * (EPOLLOUT | EPOLLET): poll() would return at once whenever the socket is writable yet
 * too close to W for the next bounded write, i.e. spin; the edge-triggered wait sleeps
 * until the peer really consumes something.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>

#include "internal.h"

#ifndef VCHAN__PUSHER_STACK
#define VCHAN__PUSHER_STACK (256 * 1024)
#endif

/* Wait until the peer consumed data (or left). */
static void vchan__pusher_wait(struct libvchan *c, int *pfd)
{
	struct epoll_event ev = { .events = EPOLLOUT | EPOLLET };
	int r;

	if (*pfd < 0) {
		*pfd = epoll_create1(EPOLL_CLOEXEC);
		ev.data.fd = c->sock;
		if (*pfd >= 0 && epoll_ctl(*pfd, EPOLL_CTL_ADD, c->sock, &ev) != 0) {
			vchan__close_fd(*pfd);
			*pfd = -1;
		}
	}
	if (*pfd < 0) {
		/* no descriptor to spare: sample every millisecond instead */
		(void)vchan__poll1(c->sock, POLLOUT, 1);
		return;
	}
	do
		r = epoll_wait(*pfd, &ev, 1, -1);
	while (r < 0 && errno == EINTR);
	if (r > 0 && (ev.events & (EPOLLHUP | EPOLLERR)))
		vchan__set_disconnected(c);
}

static void *vchan__pusher_main(void *arg)
{
	struct libvchan *c = arg;
	int pfd = -1, st;

	for (;;) {
		st = vchan__load(&c->state);
		if (st == VCHAN_WAITING) {
			/*
			 * A server that is closed while waiting has no peer to deliver to, unless
			 * close() itself just took a client from the backlog: then deliver.
			 */
			if ((vchan__load(&c->closed) || vchan__wait_listener(c) < 0) &&
			    vchan__load(&c->state) != VCHAN_CONNECTED)
				break;
			continue;
		}
		if (st != VCHAN_CONNECTED)
			break;
		vchan__lock(&c->wlock);
		if (vchan__flush_overflow(c, true, NULL) < 0) {
			vchan__unlock(&c->wlock);
			break;
		}
		if (c->ovf_len == 0) {
			c->pusher = false;
			vchan__unlock(&c->wlock);
			goto done;
		}
		vchan__unlock(&c->wlock);
		vchan__pusher_wait(c, &pfd);
	}
	/* nobody to deliver to: drop the bytes */
	vchan__lock(&c->wlock);
	vchan__ovf_discard(c);
	c->pusher = false;
	vchan__unlock(&c->wlock);
done:
	vchan__close_fd(pfd);
	vchan__unref(c);
	return NULL;
}

/* Start the pusher (wlock held, not running). 0 or -1 with errno. */
int vchan__start_pusher(struct libvchan *c)
{
	pthread_attr_t attr;
	pthread_t tid;
	sigset_t all, old;
	int r;

	if (pthread_attr_init(&attr) != 0) {
		errno = ENOMEM;
		return -1;
	}
	(void)pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	(void)pthread_attr_setstacksize(&attr, VCHAN__PUSHER_STACK);
	/* the helper must never run the application's signal handlers */
	sigfillset(&all);
	(void)pthread_sigmask(SIG_SETMASK, &all, &old);
	vchan__ref(c);
	r = pthread_create(&tid, &attr, vchan__pusher_main, c);
	(void)pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_attr_destroy(&attr);
	if (r != 0) {
		__atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL); /* the caller holds one */
		errno = r;
		return -1;
	}
	c->pusher = true;
	return 0;
}
