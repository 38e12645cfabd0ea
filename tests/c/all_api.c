/*
 * all_api - call every function of libvchan.h once, checking the documented results.
 *
 * SPDX-License-Identifier: MIT
 * Copyright (c) 2026 The vchan developers
 *
 * Built with -Wall -Wextra -Werror -pedantic against the installed or in-tree header.
 * Needs VCHAN_SOCKET_DIR (a short private directory). Prints "all_api: ok" and exits 0, or
 * names the first check that failed and exits 1.
 */
#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libvchan.h>

static int line_failed;

#define CHECK(cond)                                                                    \
	do {                                                                           \
		if (!(cond)) {                                                         \
			fprintf(stderr, "all_api: line %d: %s (errno %d)\n", __LINE__, \
				#cond, errno);                                         \
			line_failed = __LINE__;                                        \
			return 1;                                                      \
		}                                                                      \
	} while (0)

static bool readable(int fd, int ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN, .revents = 0 };

	return poll(&p, 1, ms) == 1;
}

int main(void)
{
	char buf[64];
	EVTCHN watch = -1, sfd;
	libvchan_t *srv, *cli, *srv2, *cli2;
	int i;

	/* refused arguments: NULL and errno */
	errno = 0;
	CHECK(libvchan_server_init(-1, 1, 0, 0) == NULL && errno == EINVAL);
	errno = 0;
	CHECK(libvchan_server_init(0, 1, (1u << 20) + 1, 0) == NULL && errno == EINVAL);
	errno = 0;
	CHECK(libvchan_client_init(32752, 1) == NULL && errno == EINVAL);
	errno = 0;
	CHECK(libvchan_client_init_async(0, -1, &watch) == NULL && errno == EINVAL);

	/* a server starts WAITING and buffers an early send */
	srv = libvchan_server_init(0, 7, 0, 0);
	CHECK(srv != NULL);
	CHECK(libvchan_is_open(srv) == VCHAN_WAITING);
	sfd = libvchan_fd_for_select(srv);
	CHECK(sfd >= 0);
	CHECK(!readable(sfd, 0));
	CHECK(libvchan_buffer_space(srv) == 2048);
	CHECK(libvchan_send(srv, "hi", 2) == 2);
	CHECK(libvchan_data_ready(srv) == 0);

	/* an async client connects; the server's fd reports it and wait() clears it */
	cli = libvchan_client_init_async(0, 7, &watch);
	CHECK(cli != NULL && watch >= 0);
	CHECK(libvchan_client_init_async_finish(cli, true) == 0);
	CHECK(libvchan_fd_for_select(cli) == watch);
	CHECK(readable(sfd, 5000));
	CHECK(libvchan_wait(srv) == 0);
	CHECK(libvchan_is_open(srv) == VCHAN_CONNECTED);
	CHECK(libvchan_is_open(cli) == VCHAN_CONNECTED);
	CHECK(libvchan_fd_for_select(srv) == sfd);

	/* data both ways */
	CHECK(libvchan_recv(cli, buf, 2) == 2 && memcmp(buf, "hi", 2) == 0);
	CHECK(libvchan_write(cli, "hello", 5) == 5);
	CHECK(readable(sfd, 5000));
	CHECK(libvchan_data_ready(srv) == 5);
	CHECK(libvchan_read(srv, buf, sizeof(buf)) == 5 && memcmp(buf, "hello", 5) == 0);
	CHECK(libvchan_buffer_space(cli) == 65536);
	CHECK(libvchan_write(srv, buf, 0) == 0 && libvchan_send(srv, buf, 0) == 0);
	CHECK(libvchan_read(srv, buf, 0) == 0 && libvchan_recv(srv, buf, 0) == 0);

	/* non-blocking mode */
	libvchan_set_blocking(srv, false);
	CHECK(libvchan_read(srv, buf, sizeof(buf)) == 0);
	CHECK(libvchan_recv(srv, buf, 4) == 0);
	libvchan_set_blocking(srv, true);
	errno = 0;
	CHECK(libvchan_recv(srv, buf, 4096) == -1 && errno == EMSGSIZE);

	/* a blocking client_init on a second port, then the peer goes away */
	srv2 = libvchan_server_init(0, 8, 4096, 4096);
	CHECK(srv2 != NULL);
	cli2 = libvchan_client_init(0, 8);
	CHECK(cli2 != NULL);
	CHECK(libvchan_send(cli2, "bye", 3) == 3);
	libvchan_close(cli2);
	for (i = 0; i < 5000 && libvchan_is_open(srv2) != VCHAN_DISCONNECTED; i++)
		(void)readable(libvchan_fd_for_select(srv2), 1);
	CHECK(libvchan_is_open(srv2) == VCHAN_DISCONNECTED);
	CHECK(libvchan_data_ready(srv2) == 3);
	CHECK(libvchan_read(srv2, buf, sizeof(buf)) == 3 && memcmp(buf, "bye", 3) == 0);
	errno = 0;
	CHECK(libvchan_read(srv2, buf, sizeof(buf)) == -1 && errno == EPIPE);
	errno = 0;
	CHECK(libvchan_send(srv2, "x", 1) == -1 && errno == EPIPE);
	CHECK(libvchan_buffer_space(srv2) == 0);
	libvchan_close(srv2);

	libvchan_close(cli);
	libvchan_close(srv);
	printf("all_api: ok\n");
	return line_failed ? 1 : 0;
}
