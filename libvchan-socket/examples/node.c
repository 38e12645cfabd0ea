/*
 * node - copy stdin/stdout over a vchan with blocking calls.
 *
 * SPDX-License-Identifier: MIT
 * Copyright (c) 2026 The vchan developers
 *
 * usage: node [-r | -w] server|client DOMAIN PORT
 *
 *   server  waits for a client from domain DOMAIN on PORT (rings of 64 KiB)
 *   client  connects to the server of domain DOMAIN on PORT (waits for it to appear)
 *   -r      read only: copy the channel to stdout until the peer closes
 *   -w      write only: copy stdin to the channel, then close it at end of input
 *   (none)  both directions at once (one thread per direction); ends when the peer
 *           closes (after everything it sent is on stdout) or at end of stdin (the
 *           channel is closed; bytes the peer sends afterwards are not read)
 *
 * The local domain is $VCHAN_DOMAIN (default 0), the socket directory
 * $VCHAN_SOCKET_DIR (default /var/run/vchan). Exit status: 0 on a clean end, 1 on an
 * error, 2 on a usage error.
 *
 * A server waits for its client before copying, so every byte it writes goes straight
 * into the connection: bytes held by the library's helper thread would be lost when the
 * process exits.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "libvchan.h"

#define BUFSZ 65536

static libvchan_t *ctrl;
static atomic_int closed_once;

static void close_once(void)
{
	if (!atomic_exchange(&closed_once, 1))
		libvchan_close(ctrl);
}

static int write_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t r = write(fd, p, n);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

/* stdin -> channel; returns 0 at end of input, -1 on error. */
static int copy_in(void)
{
	static char buf[BUFSZ];

	for (;;) {
		ssize_t n = read(0, buf, sizeof(buf));

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			perror("node: read stdin");
			return -1;
		}
		if (n == 0)
			return 0;
		if (libvchan_write(ctrl, buf, (size_t)n) != n) {
			if (errno != EBADF)
				perror("node: libvchan_write");
			return -1;
		}
	}
}

/* channel -> stdout; returns 0 when the peer has closed, -1 on error. */
static int copy_out(void)
{
	static char buf[BUFSZ];

	for (;;) {
		int n = libvchan_read(ctrl, buf, sizeof(buf));

		if (n < 0)
			return errno == EPIPE ? 0 : -1;
		if (write_all(1, buf, (size_t)n) < 0) {
			perror("node: write stdout");
			return -1;
		}
	}
}

static void *in_thread(void *arg)
{
	(void)arg;
	(void)copy_in();
	close_once(); /* wakes copy_out() with EBADF */
	return NULL;
}

static void usage(void)
{
	fprintf(stderr, "usage: node [-r | -w] server|client DOMAIN PORT\n");
	exit(2);
}

int main(int argc, char **argv)
{
	int mode = 0, domain, port, ret = 0;
	char *end;
	pthread_t tid;

	if (argc > 1 && (!strcmp(argv[1], "-r") || !strcmp(argv[1], "-w"))) {
		mode = argv[1][1];
		argv++;
		argc--;
	}
	if (argc != 4)
		usage();
	domain = (int)strtol(argv[2], &end, 10);
	if (*end || !*argv[2])
		usage();
	port = (int)strtol(argv[3], &end, 10);
	if (*end || !*argv[3])
		usage();
	if (!strcmp(argv[1], "server")) {
		ctrl = libvchan_server_init(domain, port, BUFSZ, BUFSZ);
		if (!ctrl) {
			perror("node: libvchan_server_init");
			return 1;
		}
		while (libvchan_is_open(ctrl) == VCHAN_WAITING) {
			if (libvchan_wait(ctrl) < 0) {
				perror("node: libvchan_wait");
				return 1;
			}
		}
	} else if (!strcmp(argv[1], "client")) {
		ctrl = libvchan_client_init(domain, port);
		if (!ctrl) {
			perror("node: libvchan_client_init");
			return 1;
		}
	} else {
		usage();
	}

	if (mode == 'w') {
		ret = copy_in();
	} else if (mode == 'r') {
		ret = copy_out();
	} else {
		if (pthread_create(&tid, NULL, in_thread, NULL) != 0) {
			fprintf(stderr, "node: cannot start a thread\n");
			return 1;
		}
		ret = copy_out();
		if (ret < 0 && errno == EBADF)
			ret = 0; /* closed by the stdin side at end of input */
	}
	close_once();
	return ret < 0 ? 1 : 0;
}
