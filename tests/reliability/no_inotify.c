/*
 * no_inotify.c - an LD_PRELOAD shim for tests/reliability/test_no_inotify.py: makes inotify
 * unavailable to a C library, as a system out of inotify instances or watches does.
 *
 * SPDX-License-Identifier: MIT
 * Copyright (c) 2026 The vchan developers
 *
 * VCHAN_TEST_INOTIFY_FAIL=init: inotify_init1() fails with EMFILE (no instance left);
 * VCHAN_TEST_INOTIFY_FAIL=watch: inotify_add_watch() fails with ENOSPC (no watch left).
 * Each failure appends a line to the file VCHAN_TEST_INOTIFY_LOG names, so the test can
 * tell that the library really took its fallback, and so does every connect() (a line
 * "connect"), so it can count the client's attempts (Python's socket module calls libc's
 * connect(), so this counts the Python engine's too). Everything passes through.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <unistd.h>

static int failing(const char *which)
{
	const char *s = getenv("VCHAN_TEST_INOTIFY_FAIL");

	return s && strcmp(s, which) == 0;
}

static void note(const char *what)
{
	const char *log = getenv("VCHAN_TEST_INOTIFY_LOG");
	int saved = errno;
	int fd = log ? open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600) : -1;
	char line[32];
	size_t n = strlen(what);

	if (fd >= 0 && n < sizeof(line)) {
		memcpy(line, what, n);
		line[n] = '\n';
		if (write(fd, line, n + 1) < 0)
			(void)0;
	}
	if (fd >= 0)
		close(fd);
	errno = saved;
}

static int fail(const char *which, int code)
{
	note(which);
	errno = code;
	return -1;
}

int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
	int (*real)(int, const struct sockaddr *, socklen_t) =
		(int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "connect");

	note("connect");
	if (!real) {
		errno = ENOSYS;
		return -1;
	}
	return real(fd, addr, len);
}

int inotify_init1(int flags)
{
	int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "inotify_init1");

	if (failing("init") || !real)
		return fail("init", EMFILE);
	return real(flags);
}

int inotify_add_watch(int fd, const char *path, uint32_t mask)
{
	int (*real)(int, const char *, uint32_t) =
		(int (*)(int, const char *, uint32_t))dlsym(RTLD_NEXT, "inotify_add_watch");

	if (failing("watch") || !real)
		return fail("watch", ENOSPC);
	return real(fd, path, mask);
}
