/*
 * node-select - copy stdin/stdout over a vchan from one poll() loop, non-blocking.
 *
 * SPDX-License-Identifier: MIT
 * Copyright (c) 2026 The vchan developers
 *
 * usage: node-select server|client DOMAIN PORT
 *
 * Copies stdin to the channel and the channel to stdout at the same time, driven by
 * poll() on stdin, stdout and libvchan_fd_for_select(), the way qrexec uses a vchan:
 * libvchan_wait() when the vchan fd is readable, a zero poll timeout while
 * libvchan_data_ready() reports bytes. Ends when the peer closes (after everything it
 * sent is on stdout) or at end of stdin once all input was accepted by the channel
 * (there is no half-close: the peer then sees the channel closed; input that cannot be
 * sent because the peer left is dropped).
 * The local domain is $VCHAN_DOMAIN (default 0), the socket directory
 * $VCHAN_SOCKET_DIR. Exit status: 0 clean end, 1 error, 2 usage.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "libvchan.h"

#define BUFSZ 65536

static char inbuf[BUFSZ], outbuf[BUFSZ];
static size_t in_len, out_len;

static int flush_out(void)
{
	size_t off = 0;

	while (off < out_len) {
		ssize_t r = write(1, outbuf + off, out_len - off);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		off += (size_t)r;
	}
	out_len = 0;
	return 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: node-select server|client DOMAIN PORT\n");
	exit(2);
}

int main(int argc, char **argv)
{
	libvchan_t *ctrl;
	int domain, port, vfd, in_eof = 0;
	char *end;

	if (argc != 4)
		usage();
	domain = (int)strtol(argv[2], &end, 10);
	if (*end || !*argv[2])
		usage();
	port = (int)strtol(argv[3], &end, 10);
	if (*end || !*argv[3])
		usage();
	if (!strcmp(argv[1], "server"))
		ctrl = libvchan_server_init(domain, port, BUFSZ, BUFSZ);
	else if (!strcmp(argv[1], "client"))
		ctrl = libvchan_client_init(domain, port);
	else
		usage();
	if (!ctrl) {
		perror("node-select: init");
		return 1;
	}
	vfd = libvchan_fd_for_select(ctrl);
	libvchan_set_blocking(ctrl, false);

	/* a server: one poll() and one wait() mean "a client connected" */
	while (libvchan_is_open(ctrl) == VCHAN_WAITING) {
		struct pollfd p = { .fd = vfd, .events = POLLIN };

		if (poll(&p, 1, -1) < 0 && errno != EINTR)
			goto fail;
		if (p.revents && libvchan_wait(ctrl) < 0)
			goto fail;
	}

	for (;;) {
		struct pollfd p[3] = {
			{ .fd = in_eof || in_len == BUFSZ ? -1 : 0, .events = POLLIN },
			{ .fd = out_len ? 1 : -1, .events = POLLOUT },
			{ .fd = vfd, .events = POLLIN },
		};
		int timeout = -1, n;

		if (out_len < BUFSZ && libvchan_data_ready(ctrl) > 0)
			timeout = 0;
		if (poll(p, 3, timeout) < 0) {
			if (errno == EINTR)
				continue;
			goto fail;
		}
		if ((p[2].revents & POLLIN) && libvchan_wait(ctrl) < 0)
			goto fail;

		/* channel -> outbuf */
		if (out_len < BUFSZ) {
			n = libvchan_read(ctrl, outbuf + out_len, BUFSZ - out_len);
			if (n < 0) {
				if (errno != EPIPE)
					goto fail;
				/* the peer closed and everything it sent has been read */
				if (flush_out() < 0)
					goto fail;
				libvchan_close(ctrl);
				return 0;
			}
			out_len += (size_t)n;
		}
		/* outbuf -> stdout */
		if (out_len && (p[1].revents & (POLLOUT | POLLERR | POLLHUP))) {
			ssize_t w = write(1, outbuf, out_len);

			if (w < 0 && errno != EINTR && errno != EAGAIN)
				goto fail;
			if (w > 0) {
				memmove(outbuf, outbuf + w, out_len - (size_t)w);
				out_len -= (size_t)w;
			}
		}
		/* stdin -> inbuf */
		if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
			ssize_t r = read(0, inbuf + in_len, BUFSZ - in_len);

			if (r < 0 && errno != EINTR && errno != EAGAIN)
				goto fail;
			if (r == 0)
				in_eof = 1;
			if (r > 0)
				in_len += (size_t)r;
		}
		/* inbuf -> channel: what fits now; the vchan fd wakes us when space frees */
		if (in_len) {
			n = libvchan_write(ctrl, inbuf, in_len);
			if (n < 0 && errno == EPIPE) {
				/* the peer left: drop our input, keep reading what it sent */
				in_len = 0;
				in_eof = 2;
				continue;
			}
			if (n < 0)
				goto fail;
			memmove(inbuf, inbuf + n, in_len - (size_t)n);
			in_len -= (size_t)n;
		}
		if (in_eof == 1 && !in_len) {
			if (flush_out() < 0)
				goto fail;
			libvchan_close(ctrl);
			return 0;
		}
	}
fail:
	perror("node-select");
	libvchan_close(ctrl);
	return 1;
}
