/*
 * init.c - channel set-up: validation, paths, server listen/accept, client connect.
 * (The handle itself is allocated, closed and freed in handle.c.)
 *
 * SPDX-License-Identifier: MIT
 * Copyright (c) 2026 The vchan developers
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

static int vchan__epoll_add(int epfd, int fd, uint32_t events)
{
	struct epoll_event ev = { .events = events, .data.fd = fd };

	return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
}

static void vchan__epoll_del(int epfd, int fd)
{
	struct epoll_event ev = { 0 };

	(void)epoll_ctl(epfd, EPOLL_CTL_DEL, fd, &ev);
}

static socklen_t vchan__addr(struct sockaddr_un *sa, const char *path)
{
	size_t len = strlen(path);

	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	memcpy(sa->sun_path, path, len + 1);
	return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
}

static int vchan__check_args(int domain, int port)
{
	if (domain < 0 || domain >= VCHAN__DOMAIN_LIMIT || port < 0) {
		errno = EINVAL;
		return -1;
	}
	return 0;
}

/* ------------------------------------------------------------------------ server */

/*
 * Whether /proc/net/unix lists a live server socket bound at `path`: listening, or bound
 * and not yet listening (another server between its bind() and listen()). Connected
 * sockets that inherited the name through accept() do not count.
 */
static bool vchan__server_at(const char *path)
{
	FILE *f = fopen("/proc/net/unix", "re");
	char *line = NULL;
	size_t cap = 0;
	ssize_t len;
	bool found = false;

	if (!f)
		return false;
	while (!found && (len = getline(&line, &cap, f)) > 0) {
		unsigned flags = 0, st = 0;
		int off = -1;

		if (line[len - 1] == '\n')
			line[--len] = '\0';
		if (sscanf(line, "%*s %*x %*x %x %*x %x %*u %n", &flags, &st, &off) < 2 ||
		    off < 0)
			continue;
		/* __SO_ACCEPTCON (listening), or SS_UNCONNECTED (bound, not connected) */
		if (((flags & 0x10000) || st == 1) && strcmp(line + off, path) == 0)
			found = true;
	}
	free(line);
	fclose(f);
	return found;
}

/*
 * Make the path free for bind(): replace a stale socket, refuse anything else. The
 * caller holds the directory lock, so no other vchan server is between its own check and
 * listen(); the inode is checked again right before unlink() all the same.
 */
static int vchan__claim_path(const char *path)
{
	struct stat st, again;

	if (lstat(path, &st) != 0)
		return errno == ENOENT ? 0 : -1;
	if (!S_ISSOCK(st.st_mode)) {
		errno = EEXIST;
		return -1;
	}
	if (vchan__server_at(path)) {
		errno = EADDRINUSE;
		return -1;
	}
	if (lstat(path, &again) != 0)
		return errno == ENOENT ? 0 : -1;
	if (again.st_dev != st.st_dev || again.st_ino != st.st_ino) {
		errno = EADDRINUSE; /* replaced meanwhile by somebody else's server */
		return -1;
	}
	if (unlink(path) != 0 && errno != ENOENT)
		return -1;
	return 0;
}

/*
 * Serialise server set-up (check, unlink, bind, listen) among vchan servers of every
 * process with an exclusive flock() on the socket directory. Returns the lock fd (close
 * to release), or -1 with errno (ENOENT: the directory does not exist).
 */
static int vchan__lock_dir(const char *path)
{
	char dir[VCHAN__PATH_MAX + 1];
	char *slash;
	int fd, r;

	memcpy(dir, path, sizeof(dir));
	slash = strrchr(dir, '/');
	if (slash == dir)
		slash[1] = '\0';
	else if (slash)
		*slash = '\0';
	else
		strcpy(dir, ".");
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	/*
	 * The lock is held for microseconds, but a child forked by another thread meanwhile
	 * shares it until it exits or execs: never wait for it longer than 100 ms, then go
	 * on without it (the inode checks still narrow the race to microseconds).
	 */
	for (int tries = 0; tries < VCHAN__DIRLOCK_TRIES; tries++) {
		struct timespec ms = { 0, VCHAN__DIRLOCK_WAIT_MS * 1000000L };

		r = flock(fd, LOCK_EX | LOCK_NB);
		if (r == 0 || (errno != EWOULDBLOCK && errno != EINTR))
			break;
		(void)nanosleep(&ms, NULL);
	}
	return fd;
}

/* socket + bind + listen(0) at c->path; records the bound inode. Returns the fd. */
static int vchan__listen(struct libvchan *c)
{
	struct sockaddr_un sa;
	socklen_t len = vchan__addr(&sa, c->path);
	struct stat st;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

	if (fd < 0)
		return -1;
	if (bind(fd, (struct sockaddr *)&sa, len) != 0)
		goto fail;
	if (lstat(c->path, &st) == 0) {
		c->bound = true;
		c->bound_dev = st.st_dev;
		c->bound_ino = st.st_ino;
	}
	if (listen(fd, 0) != 0)
		goto fail;
	return fd;
fail:
	vchan__close_fd(fd);
	return -1;
}

/* Remove our socket file if the path still names the socket we bound (slock held). */
void vchan__unlink_if_ours(struct libvchan *c)
{
	struct stat st;
	int saved = errno;

	if (!c->bound)
		return;
	c->bound = false;
	if (lstat(c->path, &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == c->bound_dev &&
	    st.st_ino == c->bound_ino)
		(void)unlink(c->path);
	errno = saved;
}

/*
 * The listener was shut down for an accept that did not give us our client (refused
 * uid, or the pending connection vanished): listen again at the same path, under the same
 * descriptor number (slock held). On failure the server can never connect: DISCONNECTED.
 */
static void vchan__relisten(struct libvchan *c)
{
	int lock_fd = vchan__lock_dir(c->path);
	int fd;

	vchan__epoll_del(c->epfd, c->listen_fd);
	vchan__unlink_if_ours(c);
	fd = vchan__claim_path(c->path) == 0 ? vchan__listen(c) : -1;
	vchan__close_fd(lock_fd);
	if (fd >= 0) {
		if (dup3(fd, c->listen_fd, O_CLOEXEC) < 0) {
			vchan__close_fd(fd);
			fd = -1;
		} else {
			vchan__close_fd(fd);
			fd = c->listen_fd;
			if (vchan__epoll_add(c->epfd, fd, EPOLLIN) != 0)
				fd = -1;
		}
	}
	if (fd < 0) {
		vchan__unlink_if_ours(c);
		vchan__store(&c->state, VCHAN_DISCONNECTED);
	}
}

/*
 * A WAITING server takes its client if one is pending. The listener is shut down before
 * accept4() so that no second client can slip into the backlog between the accept and the
 * close (it is refused and waits for a new server). With a backlog of 0 the one pending
 * connection fills the queue, so nobody else can enter between poll() and shutdown().
 */
void vchan__try_accept(struct libvchan *c, bool in_wait)
{
	bool out, latch = false;
	int fd;

	if (!c->is_server)
		return;
	vchan__lock(&c->slock);
	if (vchan__load(&c->state) != VCHAN_WAITING || vchan__load(&c->closed) ||
	    c->listen_fd < 0 || c->listen_retired)
		goto out;
	if (!(vchan__poll_now(c->listen_fd, POLLIN) & POLLIN))
		goto out;
	/*
	 * From here the listener's event is consumed. Outside wait() it must stay visible
	 * until wait() (SPEC section 5): a connected client by the fresh registration, a
	 * refused or vanished one by `latched` alone.
	 */
	latch = true; /* (inside wait() it makes wait() return, still WAITING) */
	(void)shutdown(c->listen_fd, SHUT_RD);
	do
		fd = accept4(c->listen_fd, NULL, NULL, SOCK_CLOEXEC); /* blocking, see io.c */
	while (fd < 0 && errno == EINTR);
	if (fd < 0) {
		vchan__relisten(c);
		goto out;
	}
	if (!vchan__peer_trusted(fd, c->allow_any_uid)) {
		/* listen again first: when the refused peer sees EOF, we advertise again */
		vchan__relisten(c);
		vchan__close_fd(fd);
		goto out;
	}
	vchan__epoll_del(c->epfd, c->listen_fd);
	vchan__unlink_if_ours(c);
	if (c->listen_users == 0) {
		vchan__close_fd(c->listen_fd);
		c->listen_fd = -1;
	} else {
		c->listen_retired = true; /* the last poller closes it */
	}
	c->w = vchan__setup_sndbuf(fd, c->write_ring);
	c->sock = fd;
	/*
	 * EPOLLOUT makes the fresh (writable) socket ready at once: outside wait() that is
	 * the client-connected event kept until wait(); inside, a request armed while
	 * WAITING (wait() harvests the immediate edge before returning).
	 */
	latch = !in_wait;
	/* the wait() that reports the connection keeps the first bytes' event (SPEC section 5) */
	vchan__store(&c->conn_event, 1);
	out = latch || vchan__load(&c->armed);
	vchan__lock(&c->nlock);
	c->mask_out = out;
	vchan__unlock(&c->nlock);
	if (vchan__epoll_add(c->epfd, fd, VCHAN__EPOLL_SOCK | (out ? EPOLLOUT : 0)) != 0) {
		/* cannot notify: treat as a dead connection */
		vchan__store(&c->state, VCHAN_DISCONNECTED);
		goto out;
	}
	vchan__store(&c->state, VCHAN_CONNECTED);
out:
	if (latch)
		vchan__store(&c->latched, 1);
	vchan__unlock(&c->slock);
}

/*
 * Block until a WAITING server's listener is readable, then try to accept. Returns 0,
 * or -1/EBADF if the channel was closed (-1/EINTR if an embedding's hook ended the wait).
 */
int vchan__wait_listener(struct libvchan *c)
{
	bool intr;
	int fd;

	vchan__lock(&c->slock);
	if (vchan__load(&c->closed)) {
		vchan__unlock(&c->slock);
		errno = EBADF;
		return -1;
	}
	if (vchan__load(&c->state) != VCHAN_WAITING || c->listen_fd < 0 || c->listen_retired) {
		vchan__unlock(&c->slock);
		return 0;
	}
	fd = c->listen_fd;
	c->listen_users++;
	vchan__unlock(&c->slock);

	intr = vchan__poll1(fd, POLLIN, -1) < 0 && errno == EINTR;

	vchan__lock(&c->slock);
	if (--c->listen_users == 0 && c->listen_retired) {
		vchan__close_fd(c->listen_fd);
		c->listen_fd = -1;
		c->listen_retired = false;
	}
	vchan__unlock(&c->slock);
	if (vchan__load(&c->closed)) {
		errno = EBADF;
		return -1;
	}
	if (intr) {
		errno = EINTR;
		return -1;
	}
	vchan__try_accept(c, false);
	return 0;
}

VCHAN_API libvchan_t *libvchan_server_init(int domain, int port, size_t read_min,
					   size_t write_min)
{
	return vchan__server_init(domain, port, read_min, write_min, -1);
}

libvchan_t *vchan__server_init(int domain, int port, size_t read_min, size_t write_min,
			       int allow_any_uid)
{
	struct libvchan *c;
	int local, lock_fd;

	if (vchan__check_args(domain, port) || vchan__local_domain(&local))
		return NULL;
	if (read_min > VCHAN__RING_MIN_LIMIT || write_min > VCHAN__RING_MIN_LIMIT) {
		errno = EINVAL;
		return NULL;
	}
	c = vchan__alloc(allow_any_uid);
	if (!c)
		return NULL;
	c->is_server = true;
	/* Xen's ring sizing (SPEC section 6). */
	c->read_ring = 4096;
	while (c->read_ring < read_min)
		c->read_ring <<= 1;
	c->write_ring = 4096;
	while (c->write_ring < write_min)
		c->write_ring <<= 1;
	if (read_min <= 1024 && write_min <= 2048) {
		c->read_ring = 1024;
		c->write_ring = 2048;
	} else if (read_min <= 2048 && write_min <= 1024) {
		c->read_ring = 2048;
		c->write_ring = 1024;
	} else if (read_min <= 2048) {
		c->read_ring = 2048;
	} else if (write_min <= 2048) {
		c->write_ring = 2048;
	}
	if (vchan__make_path(c->path, local, domain, port))
		goto fail;
	lock_fd = vchan__lock_dir(c->path);
	if (lock_fd < 0)
		goto fail;
	if (vchan__claim_path(c->path) == 0)
		c->listen_fd = vchan__listen(c);
	vchan__close_fd(lock_fd);
	if (c->listen_fd < 0)
		goto fail;
	if (vchan__epoll_add(c->epfd, c->listen_fd, EPOLLIN) != 0)
		goto fail;
	return c;
fail:
	vchan__abort(c);
	return NULL;
}

/* ------------------------------------------------------------------------ client */

/* Arm the one-shot back-off timer for ns nanoseconds (none yet, tfd < 0: nothing). */
void vchan__arm_timer(int tfd, long ns)
{
	struct itimerspec its = { .it_value = { .tv_sec = ns / 1000000000L,
						 .tv_nsec = ns % 1000000000L } };

	if (tfd >= 0)
		(void)timerfd_settime(tfd, 0, &its, NULL);
}

/*
 * Attach a connected socket to a client (slock held). The timerfd is closed; the inotify
 * instance only loses its watch and is closed with the channel: closing an inotify fd
 * waits for an SRCU grace period (~15 ms) until the removed watch is reaped, which would
 * delay the connection; by the time the channel is closed that has long happened.
 */
static int vchan__client_attach(struct libvchan *c, int fd)
{
	int r;

	if (c->ino_fd >= 0) {
		vchan__epoll_del(c->epfd, c->ino_fd);
		if (c->ino_wd >= 0)
			(void)inotify_rm_watch(c->ino_fd, c->ino_wd);
		c->ino_wd = -1;
	}
	if (c->tfd >= 0) {
		vchan__epoll_del(c->epfd, c->tfd);
		vchan__close_fd(c->tfd);
		c->tfd = -1;
	}
	/* the connection is a blocking socket (io.c): connect() itself was non-blocking */
	r = fcntl(fd, F_GETFL);
	if (r >= 0)
		(void)fcntl(fd, F_SETFL, r & ~O_NONBLOCK);
	c->w = vchan__setup_sndbuf(fd, c->write_ring);
	c->sock = fd;
	c->connecting = false;
	if (vchan__epoll_add(c->epfd, fd, VCHAN__EPOLL_SOCK) != 0) {
		vchan__store(&c->state, VCHAN_DISCONNECTED);
		return -1;
	}
	vchan__store(&c->state, VCHAN_CONNECTED);
	/* a request made while connecting applies now (arm() harvests its own edge) */
	if (__atomic_exchange_n(&c->armed, 0, __ATOMIC_ACQ_REL))
		vchan__arm(c);
	return 0;
}

/* One non-blocking connection attempt (slock held): 0 connected, 1 not yet, -1 error. */
static int vchan__try_connect(struct libvchan *c)
{
	struct sockaddr_un sa;
	socklen_t len = vchan__addr(&sa, c->path);
	int fd, r;

	for (;;) {
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		if (fd < 0)
			return -1;
		r = connect(fd, (struct sockaddr *)&sa, len);
		if (r == 0 || errno != EINTR)
			break;
		vchan__close_fd(fd);
	}
	if (r == 0) {
		if (!vchan__peer_trusted(fd, c->allow_any_uid)) {
			vchan__close_fd(fd);
			errno = EACCES;
			return -1;
		}
		return vchan__client_attach(c, fd);
	}
	vchan__close_fd(fd);
	switch (errno) {
	case ENOENT:
		/* inotify reports its creation; without inotify, poll on the timer */
		if (c->ino_fd >= 0)
			return 1;
		/* fall through */
	case ECONNREFUSED: /* stale file, or a server between bind() and listen() */
	case EAGAIN:       /* another client is pending at that server */
		vchan__arm_timer(c->tfd, (long)c->backoff_ms * 1000000L);
		c->backoff_ms *= 2;
		if (c->backoff_ms > VCHAN__BACKOFF_MAX_MS)
			c->backoff_ms = VCHAN__BACKOFF_MAX_MS;
		/* without inotify the timer is all we have: keep it short */
		if (c->ino_fd < 0 && c->backoff_ms > VCHAN__BACKOFF_NOINOTIFY_MS)
			c->backoff_ms = VCHAN__BACKOFF_NOINOTIFY_MS;
		return 1;
	default:
		return -1;
	}
}

/* Read everything pending on a non-blocking fd; whether anything was there. */
static bool vchan__drain(int fd)
{
	char buf[4096] __attribute__((aligned(8)));
	bool any = false;
	ssize_t r;

	if (fd < 0)
		return false;
	for (;;) {
		r = read(fd, buf, sizeof(buf));
		if (r > 0)
			any = true;
		else if (!(r < 0 && errno == EINTR))
			break;
	}
	return any;
}

/* Drive an async client connection (caller holds a reference). 0, 1 or -1. */
int vchan__finish(struct libvchan *c, bool blocking)
{
	struct epoll_event ev[4];
	int r;

	for (;;) {
		vchan__lock(&c->slock);
		if (vchan__load(&c->closed)) {
			vchan__unlock(&c->slock);
			errno = EBADF;
			return -1;
		}
		if (!c->connecting) {
			r = c->sock >= 0 ? 0 : -1;
			vchan__unlock(&c->slock);
			if (r < 0)
				errno = ENOTCONN;
			return r;
		}
		if (vchan__drain(c->ino_fd))
			c->backoff_ms = VCHAN__BACKOFF_FIRST_MS;
		(void)vchan__drain(c->tfd);
		r = vchan__try_connect(c);
		if (r < 0) {
			int saved = errno;

			c->connecting = false;
			vchan__store(&c->state, VCHAN_DISCONNECTED);
			errno = saved;
		}
		vchan__unlock(&c->slock);
		if (r <= 0 || !blocking)
			return r;
		do
			r = epoll_wait(c->epfd, ev, 4, -1);
		while (r < 0 && errno == EINTR && vchan__intr_retry());
		if (r < 0)
			return -1;
	}
}

/*
 * Client set-up. `watch`: the caller polls the watch fd before finish() (async init), so a
 * connection made here must make it readable, as Xen's xenstore watch fires at once: the
 * connection is latched as an event, reported by the next wait() (SPEC section 2).
 * allow_any_uid as for vchan__alloc().
 */
libvchan_t *vchan__client_start(int domain, int port, EVTCHN *watch_fd, bool watch,
				int allow_any_uid)
{
	struct libvchan *c;
	char dir[VCHAN__PATH_MAX + 1];
	char *slash;
	struct stat st;
	int local, r;

	if (!watch_fd) {
		errno = EINVAL;
		return NULL;
	}
	if (vchan__check_args(domain, port) || vchan__local_domain(&local))
		return NULL;
	c = vchan__alloc(allow_any_uid);
	if (!c)
		return NULL;
	c->read_ring = c->write_ring = VCHAN__CLIENT_RING;
	c->connecting = true;
	c->backoff_ms = VCHAN__BACKOFF_FIRST_MS;
	if (vchan__make_path(c->path, domain, local, port))
		goto fail;
	memcpy(dir, c->path, sizeof(dir));
	slash = strrchr(dir, '/');
	if (slash == dir)
		slash[1] = '\0';
	else if (slash)
		*slash = '\0';
	else
		strcpy(dir, ".");
	if (stat(dir, &st) != 0)
		goto fail;
	if (!S_ISDIR(st.st_mode)) {
		errno = ENOTDIR;
		goto fail;
	}
	/*
	 * First attempt with no watch: when the server is already there (the common case)
	 * no inotify instance is needed at all.
	 */
	vchan__lock(&c->slock);
	r = vchan__try_connect(c);
	vchan__unlock(&c->slock);
	if (r < 0)
		goto fail_connect;
	if (r == 0)
		goto done;
	/* Not there yet: the back-off timer, and inotify on the directory. */
	c->backoff_ms = VCHAN__BACKOFF_FIRST_MS;
	c->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	if (c->tfd < 0 || vchan__epoll_add(c->epfd, c->tfd, EPOLLIN) != 0)
		goto fail;
	c->ino_fd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
	if (c->ino_fd >= 0) {
		c->ino_wd = inotify_add_watch(c->ino_fd, dir, VCHAN__INOTIFY_MASK);
		if (c->ino_wd < 0) {
			if (errno == ENOENT || errno == ENOTDIR)
				goto fail;
			/* no watch available (ENOSPC): fall back to the timer alone */
			vchan__close_fd(c->ino_fd);
			c->ino_fd = -1;
		} else if (vchan__epoll_add(c->epfd, c->ino_fd, EPOLLIN) != 0) {
			goto fail;
		}
	}
	/* (out of inotify instances, EMFILE: the timer alone, with a shorter back-off) */
	/* Try again now that the watch exists, so that no creation can be missed. */
	vchan__lock(&c->slock);
	r = vchan__try_connect(c);
	vchan__unlock(&c->slock);
	if (r < 0)
		goto fail_connect;
done:
	if (r == 0 && watch) {
		vchan__store(&c->conn_event, 1);
		vchan__latch(c);
	}
	*watch_fd = c->epfd;
	return c;
fail_connect:
	c->connecting = false;
fail:
	vchan__abort(c);
	return NULL;
}

VCHAN_API libvchan_t *libvchan_client_init_async(int domain, int port, EVTCHN *watch_fd)
{
	return vchan__client_start(domain, port, watch_fd, true, -1);
}

VCHAN_API int libvchan_client_init_async_finish(libvchan_t *ctrl, bool blocking)
{
	int r;

	if (vchan__enter(ctrl))
		return -1;
	r = vchan__finish(ctrl, blocking);
	vchan__leave(ctrl);
	return r;
}

VCHAN_API libvchan_t *libvchan_client_init(int domain, int port)
{
	EVTCHN fd;
	struct libvchan *c = vchan__client_start(domain, port, &fd, false, -1);

	if (!c)
		return NULL;
	if (vchan__finish(c, true) != 0) {
		vchan__abort(c);
		return NULL;
	}
	return c;
}
