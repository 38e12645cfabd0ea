/*
 * close_race - close() from another thread while a call is blocked on the same handle.
 *
 * SPDX-License-Identifier: MIT
 * Copyright (c) 2026 The vchan developers
 *
 * usage: close_race [ROUNDS]   (default 100 per kind; VCHAN_SOCKET_DIR must be set)
 *
 * For each kind of blocking call (read, recv, write and send on a full channel, wait,
 * read and wait on a waiting server, a blocking async finish with no server), a thread
 * enters the call; once the kernel reports the thread asleep, the main thread closes the
 * handle. The blocked call must return -1 with errno EBADF within 5 s. Built against the
 * ASan build this also proves there is no use after free. Exit 0 when all went well.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "libvchan.h"

enum kind { K_READ, K_RECV, K_WRITE, K_SEND, K_WAIT, K_WAITING_READ, K_WAITING_WAIT,
	    K_FINISH, K_COUNT };
static const char *names[K_COUNT] = { "read", "recv", "write", "send", "wait",
				      "read on a waiting server", "wait on a waiting server",
				      "async finish" };

struct job {
	enum kind kind;
	libvchan_t *h;
	volatile pid_t tid;
	int ret, err;
	volatile int done;
};

static char big[8 << 20];

static void *victim(void *arg)
{
	struct job *j = arg;
	char buf[256];

	j->tid = (pid_t)syscall(SYS_gettid);
	switch (j->kind) {
	case K_READ:
	case K_WAITING_READ:
		j->ret = libvchan_read(j->h, buf, sizeof(buf));
		break;
	case K_RECV:
		j->ret = libvchan_recv(j->h, buf, 100);
		break;
	case K_WRITE:
		j->ret = libvchan_write(j->h, big, sizeof(big));
		break;
	case K_SEND:
		j->ret = libvchan_send(j->h, big, 2048);
		break;
	case K_WAIT:
	case K_WAITING_WAIT:
		j->ret = libvchan_wait(j->h);
		break;
	case K_FINISH:
		j->ret = libvchan_client_init_async_finish(j->h, true);
		break;
	default:
		break;
	}
	j->err = errno;
	__atomic_store_n(&j->done, 1, __ATOMIC_RELEASE);
	return NULL;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Whether the thread is asleep in the kernel (state S in /proc). */
static int asleep(pid_t tid)
{
	char path[64], buf[512], *p;
	FILE *f;
	size_t n;

	snprintf(path, sizeof(path), "/proc/self/task/%d/stat", (int)tid);
	f = fopen(path, "r");
	if (!f)
		return 0;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	p = strrchr(buf, ')');
	return p && p[1] == ' ' && p[2] == 'S';
}

static int fail(int round, enum kind k, const char *what)
{
	fprintf(stderr, "round %d, %s: %s\n", round, names[k], what);
	return 1;
}

static int one(int round, enum kind k, int port)
{
	libvchan_t *srv = NULL, *cli = NULL, *other = NULL;
	struct job j = { .kind = k };
	pthread_t t;
	EVTCHN fd;
	double end;

	if (k == K_FINISH) {
		j.h = libvchan_client_init_async(0, port, &fd);
		if (!j.h)
			return fail(round, k, "client_init_async");
	} else {
		srv = libvchan_server_init(0, port, 0, 0);
		if (!srv)
			return fail(round, k, "server_init");
		if (k == K_WAITING_READ || k == K_WAITING_WAIT) {
			j.h = srv;
		} else {
			cli = libvchan_client_init(0, port);
			if (!cli || libvchan_is_open(srv) != VCHAN_CONNECTED)
				return fail(round, k, "connect");
			if (k == K_WAIT)
				while (libvchan_wait(srv) == 0 && libvchan_data_ready(srv) < 0)
					;
			if (k == K_SEND) { /* fill the channel: the peer never reads */
				libvchan_set_blocking(srv, false);
				while (libvchan_write(srv, big, 65536) > 0)
					;
				libvchan_set_blocking(srv, true);
			}
			j.h = srv;
			other = cli;
		}
	}
	if (pthread_create(&t, NULL, victim, &j) != 0)
		return fail(round, k, "pthread_create");
	end = now() + 5;
	while (!(j.tid && asleep(j.tid)) && !__atomic_load_n(&j.done, __ATOMIC_ACQUIRE)) {
		if (now() > end)
			return fail(round, k, "the call never went to sleep");
		sched_yield();
	}
	if (__atomic_load_n(&j.done, __ATOMIC_ACQUIRE))
		return fail(round, k, "the call returned instead of blocking");
	libvchan_close(j.h);
	end = now() + 5;
	while (!__atomic_load_n(&j.done, __ATOMIC_ACQUIRE)) {
		if (now() > end)
			return fail(round, k, "still blocked 5 s after close()");
		usleep(100);
	}
	pthread_join(t, NULL);
	if (j.ret != -1 || j.err != EBADF) {
		fprintf(stderr, "round %d, %s: returned %d errno %d, not -1/EBADF\n", round,
			names[k], j.ret, j.err);
		return 1;
	}
	if (other)
		libvchan_close(other);
	return 0;
}

int main(int argc, char **argv)
{
	int rounds = argc > 1 ? atoi(argv[1]) : 100;

	if (!getenv("VCHAN_SOCKET_DIR")) {
		fprintf(stderr, "VCHAN_SOCKET_DIR must be set\n");
		return 2;
	}
	for (int r = 0; r < rounds; r++)
		for (int k = 0; k < K_COUNT; k++)
			if (one(r, (enum kind)k, 10 + k))
				return 1;
	printf("close_race: %d rounds of %d kinds ok\n", rounds, K_COUNT);
	return 0;
}
