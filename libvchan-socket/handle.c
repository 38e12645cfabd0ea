/*
 * handle.c - the handle's lifetime: allocation, references, close, release.
 *
 * SPDX-License-Identifier: MIT
 * Copyright (c) 2026 The vchan developers
 *
 * `refs` counts the owner (from vchan__alloc() until libvchan_close()), every API call in
 * progress (vchan__enter() .. vchan__leave()) and the pusher thread. Whoever drops the
 * last reference closes the descriptors and frees the memory (vchan__free()), so a close()
 * from another thread never frees memory in use and no descriptor number is reused while a
 * call may still use it (internal.h, "Lifetime"; DESIGN.md, "Life cycle").
 */
#include <errno.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"

/*
 * A new handle, WAITING, with its epoll instance and the owner's reference.
 * allow_any_uid: 0 or 1, or -1 for $VCHAN_ALLOW_ANY_UID.
 */
struct libvchan *vchan__alloc(int allow_any_uid)
{
	struct libvchan *c = calloc(1, sizeof(*c));

	if (!c) {
		errno = ENOMEM;
		return NULL;
	}
	c->pid = getpid();
	c->epfd = c->sock = c->listen_fd = c->ino_fd = c->ino_wd = c->tfd = -1;
	c->refs = 1;
	c->blocking = 1;
	c->state = VCHAN_WAITING;
	c->allow_any_uid = allow_any_uid < 0 ? vchan__env_allow_any_uid() : allow_any_uid != 0;
	pthread_mutex_init(&c->slock, NULL);
	pthread_mutex_init(&c->wlock, NULL);
	pthread_mutex_init(&c->rlock, NULL);
	pthread_mutex_init(&c->nlock, NULL);
	c->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (c->epfd < 0) {
		int saved = errno;

		pthread_mutex_destroy(&c->slock);
		pthread_mutex_destroy(&c->wlock);
		pthread_mutex_destroy(&c->rlock);
		pthread_mutex_destroy(&c->nlock);
		free(c);
		errno = saved;
		return NULL;
	}
	return c;
}

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
		pthread_mutex_destroy(&c->nlock);
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

/* Free a handle that never left init (no other thread can know it). errno kept. */
void vchan__abort(struct libvchan *c)
{
	int saved = errno;

	libvchan_close(c);
	errno = saved;
}

/*
 * The owner's part of close() (slock): stop advertising and wake every thread blocked
 * on one of our descriptors; they see `closed` and return EBADF. The connection is only
 * shut down for reading, so a pusher can still deliver accepted bytes.
 */
static void vchan__close_wake(struct libvchan *c)
{
	vchan__lock(&c->slock);
	if (c->listen_fd >= 0 && !c->listen_retired)
		(void)shutdown(c->listen_fd, SHUT_RDWR);
	vchan__unlink_if_ours(c);
	vchan__arm_timer(c->tfd, 1);
	if (c->sock >= 0)
		(void)shutdown(c->sock, SHUT_RD);
	vchan__unlock(&c->slock);
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
