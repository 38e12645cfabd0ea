/*
 * util.c - small helpers: truesize bounds, environment, paths, EINTR-safe syscalls.
 *
 * SPDX-License-Identifier: MIT
 * Copyright (c) 2026 The vchan developers
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"

/*
 * Upper bound of the truesize the kernel charges to SO_SNDBUF for one write of n bytes
 * on a Unix stream socket (DESIGN.md: "tsz").
 */
size_t vchan__tsz(size_t n)
{
	return n + VCHAN__TSZ_BASE + VCHAN__TSZ_STEP * (n >> VCHAN__TSZ_SHIFT);
}

/* The largest payload n with tsz(n) <= room (DESIGN.md: "fit"). */
size_t vchan__fit(size_t room)
{
	if (room <= VCHAN__TSZ_BASE)
		return 0;
	room -= VCHAN__TSZ_BASE;
	return room - (room >> VCHAN__FIT_SHIFT);
}

/* $VCHAN_DOMAIN, strictly decimal, 0 <= d < VCHAN__DOMAIN_LIMIT; default 0. -1/EINVAL if invalid. */
int vchan__local_domain(int *out)
{
	const char *s = getenv("VCHAN_DOMAIN");
	long v = 0;

	if (!s) {
		*out = 0;
		return 0;
	}
	if (!*s)
		goto bad;
	for (const char *p = s; *p; p++) {
		if (*p < '0' || *p > '9')
			goto bad;
		v = v * 10 + (*p - '0');
		if (v >= VCHAN__DOMAIN_LIMIT)
			goto bad;
	}
	*out = (int)v;
	return 0;
bad:
	errno = EINVAL;
	return -1;
}

/* Build the socket path into buf (VCHAN__PATH_MAX + 1 bytes). -1/ENAMETOOLONG. */
int vchan__make_path(char *buf, int server_domain, int client_domain, int port)
{
	const char *dir = getenv("VCHAN_SOCKET_DIR");
	char tmp[PATH_MAX + 64];
	int n;

	if (!dir || !*dir)
		dir = VCHAN__SOCKET_DIR;
	n = snprintf(tmp, sizeof(tmp), "%s/vchan.%d.%d.%d.sock", dir, server_domain,
		     client_domain, port);
	if (n < 0 || (size_t)n >= sizeof(tmp) || n > VCHAN__PATH_MAX) {
		errno = ENAMETOOLONG;
		return -1;
	}
	memcpy(buf, tmp, (size_t)n + 1);
	return 0;
}

bool vchan__env_allow_any_uid(void)
{
	const char *s = getenv("VCHAN_ALLOW_ANY_UID");

	return s && *s && strcmp(s, "0") != 0;
}

/* Whether the peer of a connected socket runs as our effective uid or root. */
bool vchan__peer_trusted(int fd, bool allow_any_uid)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);

	if (allow_any_uid)
		return true;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
		return false;
	return cred.uid == 0 || cred.uid == geteuid();
}

/*
 * Raise SO_SNDBUF so that W = S/4 >= W_RINGS * write_ring + W_EXTRA when the system allows it;
 * return the real W.
 */
size_t vchan__setup_sndbuf(int fd, size_t write_ring)
{
	size_t want = VCHAN__W_RINGS * write_ring + VCHAN__W_EXTRA;
	int cur = 0;
	socklen_t len = sizeof(cur);

	if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &cur, &len) == 0 &&
	    (size_t)cur / 4 < want) {
		int val = (int)(2 * want);

		(void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &val, sizeof(val));
		len = sizeof(cur);
		if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &cur, &len) != 0)
			cur = 0;
	}
	return cur > 0 ? (size_t)cur / 4 : 0;
}

/* NULL in the shared library; see internal.h. */
int (*vchan__intr_hook)(void);

/* A wait was interrupted by a signal: whether to retry it (always, without a hook). */
bool vchan__intr_retry(void)
{
	int saved = errno;
	bool retry = !vchan__intr_hook || vchan__intr_hook() == 0;

	errno = saved;
	return retry;
}

static int vchan__poll1_how(int fd, short events, int timeout_ms, bool interruptible)
{
	struct pollfd p = { .fd = fd, .events = events, .revents = 0 };
	int r;

	do
		r = poll(&p, 1, timeout_ms);
	while (r < 0 && errno == EINTR && (!interruptible || vchan__intr_retry()));
	if (r < 0)
		return -1;
	return r ? p.revents : 0;
}

/*
 * poll() one fd; returns revents, 0 on timeout, -1 on error. EINTR is retried (unless an
 * embedding's hook ends the wait, see internal.h: then -1/EINTR). No lock may be held.
 */
int vchan__poll1(int fd, short events, int timeout_ms)
{
	return vchan__poll1_how(fd, events, timeout_ms, timeout_ms != 0);
}

/* vchan__poll1() for a wait made with a lock held: EINTR is always retried. */
int vchan__poll1_locked(int fd, short events, int timeout_ms)
{
	return vchan__poll1_how(fd, events, timeout_ms, false);
}

/* The events of one fd right now (poll with timeout 0); 0 on error. */
int vchan__poll_now(int fd, short events)
{
	int r = vchan__poll1(fd, events, 0);

	return r > 0 ? r : 0;
}

ssize_t vchan__send(int fd, const void *buf, size_t len)
{
	ssize_t r;

	do
		r = send(fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
	while (r < 0 && errno == EINTR);
	return r;
}

/*
 * recv() with flags; a blocking one (flags 0 or MSG_WAITALL) sleeps in the kernel (with no
 * lock held: an embedding's hook may end it, -1/EINTR, see internal.h).
 */
ssize_t vchan__recv_flags(int fd, void *buf, size_t len, int flags)
{
	ssize_t r;

	do
		r = recv(fd, buf, len, flags);
	while (r < 0 && errno == EINTR && ((flags & MSG_DONTWAIT) || vchan__intr_retry()));
	return r;
}

/* An int-valued ioctl (FIONREAD, SIOCOUTQ); -1 on error. */
int vchan__ioctl_int(int fd, unsigned long req)
{
	int v = 0, r;

	do
		r = ioctl(fd, req, &v);
	while (r < 0 && errno == EINTR);
	return r < 0 ? -1 : v;
}

/* close() that keeps errno. Not retried on EINTR: on Linux the fd is gone either way. */
void vchan__close_fd(int fd)
{
	int saved = errno;

	if (fd >= 0)
		(void)close(fd);
	errno = saved;
}

void vchan__lock(pthread_mutex_t *m)
{
	(void)pthread_mutex_lock(m);
}

void vchan__unlock(pthread_mutex_t *m)
{
	(void)pthread_mutex_unlock(m);
}
