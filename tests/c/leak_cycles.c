/*
 * leak_cycles - open/close connected vchan pairs many times in one process and check
 * that descriptors, threads and memory stay where they were.
 *
 * SPDX-License-Identifier: MIT
 * Copyright (c) 2026 The vchan developers
 *
 * usage: leak_cycles [CYCLES]   (default 10000; VCHAN_SOCKET_DIR must be set)
 * Prints "fds A->B threads C->D rss E->F KiB" and exits 0 when nothing grew, 1 when
 * something leaked, 2 when a call failed. Each failure names the cycle and the call.
 * Built with AddressSanitizer, the RSS check is skipped (its quarantine keeps freed
 * memory resident by design): run with ASAN_OPTIONS=detect_leaks=1 and LeakSanitizer
 * reports any block the cycles leaked at exit.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "libvchan.h"

#define WARMUP 300
#define RSS_SLACK_KIB 4096

#if defined(__SANITIZE_ADDRESS__)
#define CHECK_RSS 0
#else
#define CHECK_RSS 1
#endif

static int count_dir(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *e;
	int n = 0;

	if (!d)
		return -1;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

static long rss_kib(void)
{
	FILE *f = fopen("/proc/self/statm", "r");
	long pages = 0, resident = 0;

	if (!f)
		return -1;
	if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
		resident = -1;
	fclose(f);
	return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

#define CHECK(cond, what)                                                              \
	do {                                                                           \
		if (!(cond)) {                                                         \
			fprintf(stderr, "cycle %d: %s failed (errno %d: %s)\n", i, what, \
				errno, strerror(errno));                               \
			exit(2);                                                       \
		}                                                                      \
	} while (0)

static void cycle(int i)
{
	int port = i % 64;
	char buf[8];
	libvchan_t *srv, *cli;

	srv = libvchan_server_init(0, port, 0, 0);
	CHECK(srv, "server_init");
	if (i % 10 == 0) /* an early write on a WAITING server starts a helper thread */
		CHECK(libvchan_send(srv, "early", 5) == 5, "send on a waiting server");
	cli = libvchan_client_init(0, port);
	CHECK(cli, "client_init");
	CHECK(libvchan_is_open(srv) == VCHAN_CONNECTED, "is_open(server)");
	if (i % 10 == 0)
		CHECK(libvchan_recv(cli, buf, 5) == 5 && !memcmp(buf, "early", 5), "recv early");
	CHECK(libvchan_send(cli, "ping", 4) == 4, "send");
	CHECK(libvchan_recv(srv, buf, 4) == 4 && !memcmp(buf, "ping", 4), "recv");
	if (i % 7 == 0) { /* a promise kept through the overflow, then close */
		int bs = libvchan_buffer_space(srv);

		CHECK(bs > 0, "buffer_space");
		for (int k = 0; k < bs; k++)
			CHECK(libvchan_write(srv, "x", 1) == 1, "one-byte write");
	}
	if (i % 3 == 0) {
		libvchan_close(srv);
		libvchan_close(cli);
	} else {
		libvchan_close(cli);
		libvchan_close(srv);
	}
}

int main(int argc, char **argv)
{
	int cycles = argc > 1 ? atoi(argv[1]) : 10000;
	const char *dir = getenv("VCHAN_SOCKET_DIR");
	int fds0, thr0, fds1, thr1, i = 0;
	long rss0, rss1;
	double t0, deadline;

	if (!dir) {
		fprintf(stderr, "VCHAN_SOCKET_DIR must be set\n");
		return 2;
	}
	for (i = 0; i < WARMUP; i++)
		cycle(i);
	/* this program has one thread; wait for the warm-up's helper threads to end */
	deadline = now() + 10;
	while ((thr0 = count_dir("/proc/self/task")) > 1 && now() < deadline)
		usleep(1000);
	fds0 = count_dir("/proc/self/fd");
	rss0 = rss_kib();
	t0 = now();
	for (i = 0; i < cycles; i++)
		cycle(i);
	/* helper threads end on their own once their bytes are delivered or dropped */
	deadline = now() + 10;
	while ((thr1 = count_dir("/proc/self/task")) > thr0 && now() < deadline)
		usleep(1000);
	fds1 = count_dir("/proc/self/fd");
	rss1 = rss_kib();
	printf("%d cycles in %.2f s: fds %d->%d threads %d->%d rss %ld->%ld KiB, "
	       "%d socket files left\n",
	       cycles, now() - t0, fds0, fds1, thr0, thr1, rss0, rss1, count_dir(dir));
	if (fds1 > fds0 || thr1 > thr0 || (CHECK_RSS && rss1 - rss0 > RSS_SLACK_KIB) ||
	    count_dir(dir) != 0)
		return 1;
	return 0;
}
