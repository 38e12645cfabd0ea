/*
 * progs.h - helpers shared by the Qubes-pattern test programs (the .c files beside it).
 *
 * SPDX-License-Identifier: MIT
 * Copyright (c) 2026 The vchan developers
 *
 * Everything a program needs besides the libvchan calls themselves: deadlines scaled by
 * $VCHAN_TEST_TIMEOUT (as tests/conftest.py scales them), dying with a message, an alarm()
 * guard around the calls that block with no timeout of their own, the deterministic byte
 * stream the programs exchange, argument parsing and the start-order tokens the driver
 * passes as pipe descriptors. Each Python twin has the same helpers in _progs.py and the
 * stream is byte for byte the same, so a C end and a Python end verify each other.
 *
 * The stream: byte i of stream `seed` is byte (i % 8) (little-endian) of the 64-bit word
 * BASE[(i / 8) % 8192] ^ KEY[i / 65536], where BASE[w] = mix64(seed ^ (G1 * (w + 1))) and
 * KEY[b] = mix64(~seed ^ (G2 * (b + 1))) (arithmetic mod 2^64, mix64 the splitmix64
 * finalizer). A lost, repeated or shifted chunk never lines up with the expected bytes.
 */
#ifndef VCHAN_TEST_PROGS_H
#define VCHAN_TEST_PROGS_H

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PROGS_FN static __attribute__((unused))

/* what die() and the alarm handler print first: set by each main() */
static const char *prog_name = "prog";

PROGS_FN __attribute__((noreturn, format(printf, 1, 2))) void die(const char *fmt, ...)
{
	va_list ap;

	fflush(stdout);
	fprintf(stderr, "%s: FAIL: ", prog_name);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

/* "what failed: errno text" for a libvchan or system call that returned an error */
#define die_errno(what, ...) die(what " (errno %d: %s)", ##__VA_ARGS__, errno, strerror(errno))

/* ---- time */

PROGS_FN double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* $VCHAN_TEST_TIMEOUT (seconds, default 10): the generous deadline of anything that must happen */
PROGS_FN double test_timeout(void)
{
	const char *s = getenv("VCHAN_TEST_TIMEOUT");
	char *end;
	double t;

	if (!s || !*s)
		return 10.0;
	t = strtod(s, &end);
	if (*end || t <= 0)
		die("bad VCHAN_TEST_TIMEOUT %s", s);
	return t;
}

/* a tolerance of `seconds` on a normal machine, scaled like the timeout (default 10) */
PROGS_FN double scaled(double seconds)
{
	return seconds * test_timeout() / 10.0;
}

/* milliseconds left until `deadline` (a now() value), for poll(); 0 once passed */
PROGS_FN int ms_left(double deadline)
{
	double left = deadline - now();

	if (left <= 0)
		return 0;
	if (left > 2e6)
		return 2000000000;
	return (int)(left * 1000.0) + 1;
}

/* poll() that retries EINTR with the time that is left; dies on an error */
PROGS_FN int poll_until(struct pollfd *fds, nfds_t n, double deadline)
{
	for (;;) {
		int r = poll(fds, n, ms_left(deadline));

		if (r >= 0)
			return r;
		if (errno != EINTR)
			die_errno("poll");
	}
}

/* ---- the alarm guard: a blocking call that has no timeout of its own */

static const char *volatile guard_what = "";

PROGS_FN void guard_fire(int sig)
{
	const char *what = guard_what;
	const char *msg = ": FAIL: still blocked after the deadline in ";

	(void)sig;
	/* async-signal-safe: write(2) only */
	if (write(2, prog_name, strlen(prog_name)) < 0 || write(2, msg, strlen(msg)) < 0 ||
	    write(2, what, strlen(what)) < 0 || write(2, "\n", 1) < 0)
		_exit(1);
	_exit(1);
}

/* die with `what` if guard_end() is not called within `seconds` (rounded up, at least 1) */
PROGS_FN void guard_start(const char *what, double seconds)
{
	static int installed;
	unsigned s = seconds < 1 ? 1 : (unsigned)(seconds + 0.999);

	if (!installed) {
		struct sigaction sa;

		memset(&sa, 0, sizeof(sa));
		sa.sa_handler = guard_fire;
		sigemptyset(&sa.sa_mask);
		if (sigaction(SIGALRM, &sa, NULL) < 0)
			die_errno("sigaction");
		installed = 1;
	}
	guard_what = what;
	alarm(s);
}

PROGS_FN void guard_end(void)
{
	alarm(0);
	guard_what = "";
}

/* A blocking recv() of exactly n bytes, guarded: die with `what` after `limit` seconds. The
 * programs include libvchan.h before this header. */
PROGS_FN void recv_exact(libvchan_t *c, void *buf, size_t n, double limit, const char *what)
{
	int r;

	guard_start(what, limit);
	r = libvchan_recv(c, buf, n);
	guard_end();
	if (r != (int)n)
		die_errno("%s: recv(%zu) returned %d", what, n, r);
}

/* ---- the deterministic stream */

#define STREAM_BLOCK 65536
#define STREAM_WORDS (STREAM_BLOCK / 8)
#define STREAM_G1 0x9E3779B97F4A7C15ULL
#define STREAM_G2 0xD1B54A32D192ED03ULL

PROGS_FN uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

struct stream {
	uint64_t seed;
	uint64_t cur;                      /* index of the block in `block`, or UINT64_MAX */
	uint64_t base[STREAM_WORDS];
	unsigned char block[STREAM_BLOCK]; /* the bytes of block `cur` */
};

PROGS_FN struct stream *stream_new(uint64_t seed)
{
	struct stream *s = malloc(sizeof(*s));

	if (!s)
		die("out of memory");
	s->seed = seed;
	s->cur = UINT64_MAX;
	for (uint64_t w = 0; w < STREAM_WORDS; w++)
		s->base[w] = mix64(seed ^ (STREAM_G1 * (w + 1)));
	return s;
}

PROGS_FN void stream_load(struct stream *s, uint64_t b)
{
	uint64_t key = mix64(~s->seed ^ (STREAM_G2 * (b + 1)));

	for (size_t w = 0; w < STREAM_WORDS; w++) {
		uint64_t v = s->base[w] ^ key;

		for (int k = 0; k < 8; k++)
			s->block[w * 8 + (size_t)k] = (unsigned char)(v >> (8 * k));
	}
	s->cur = b;
}

/* bytes [offset, offset + n) of the stream into out */
PROGS_FN void stream_fill(struct stream *s, uint64_t offset, unsigned char *out, size_t n)
{
	while (n) {
		uint64_t b = offset / STREAM_BLOCK;
		size_t at = (size_t)(offset % STREAM_BLOCK), k = STREAM_BLOCK - at;

		if (k > n)
			k = n;
		if (s->cur != b)
			stream_load(s, b);
		memcpy(out, s->block + at, k);
		out += k;
		offset += k;
		n -= k;
	}
}

/* index in data of the first byte that differs from the stream at offset; -1 if none */
PROGS_FN long stream_mismatch(struct stream *s, uint64_t offset, const unsigned char *data,
			      size_t n)
{
	size_t done = 0;

	while (done < n) {
		uint64_t b = (offset + done) / STREAM_BLOCK;
		size_t at = (size_t)((offset + done) % STREAM_BLOCK), k = STREAM_BLOCK - at;

		if (k > n - done)
			k = n - done;
		if (s->cur != b)
			stream_load(s, b);
		if (memcmp(data + done, s->block + at, k)) {
			for (size_t i = 0; i < k; i++)
				if (data[done + i] != s->block[at + i])
					return (long)(done + i);
		}
		done += k;
	}
	return -1;
}

/* ---- arguments */

PROGS_FN long long arg_int(const char *s, const char *what, long long lo, long long hi)
{
	char *end;
	long long v;

	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno || !*s || *end || v < lo || v > hi)
		die("bad %s: %s", what, s);
	return v;
}

/*
 * Start-order tokens between the two ends, so the driver can decide who goes first in every
 * round: "none", "give:FD" (write one byte to pipe FD at the agreed point) or "take:FD" (read
 * one byte from FD before going on, within the deadline).
 */
PROGS_FN void sync_give(const char *spec)
{
	int fd;

	if (!strcmp(spec, "none"))
		return;
	if (strncmp(spec, "give:", 5))
		return;
	fd = (int)arg_int(spec + 5, "sync fd", 0, 1 << 20);
	while (write(fd, "t", 1) != 1)
		if (errno != EINTR)
			die_errno("sync: write to fd %d", fd);
}

PROGS_FN void sync_take(const char *spec, double deadline)
{
	struct pollfd p;
	char c;
	ssize_t r;

	if (strncmp(spec, "take:", 5))
		return;
	p.fd = (int)arg_int(spec + 5, "sync fd", 0, 1 << 20);
	p.events = POLLIN;
	if (poll_until(&p, 1, deadline) == 0)
		die("sync: the other end gave no start token in time");
	do
		r = read(p.fd, &c, 1);
	while (r < 0 && errno == EINTR);
	if (r != 1)
		die("sync: the other end is gone (read returned %zd)", r);
}

PROGS_FN void sync_check(const char *spec)
{
	if (strcmp(spec, "none") && strncmp(spec, "give:", 5) && strncmp(spec, "take:", 5))
		die("bad sync spec %s (none, give:FD or take:FD)", spec);
}

/* ---- little-endian message headers: 8 bytes, type then length (as qrexec's msg_header) */

struct hdr {
	uint32_t type;
	uint32_t len;
};

PROGS_FN void hdr_pack(unsigned char out[8], uint32_t type, uint32_t len)
{
	for (int k = 0; k < 4; k++) {
		out[k] = (unsigned char)(type >> (8 * k));
		out[4 + k] = (unsigned char)(len >> (8 * k));
	}
}

PROGS_FN struct hdr hdr_unpack(const unsigned char in[8])
{
	struct hdr h = { 0, 0 };

	for (int k = 0; k < 4; k++) {
		h.type |= (uint32_t)in[k] << (8 * k);
		h.len |= (uint32_t)in[4 + k] << (8 * k);
	}
	return h;
}

#endif /* VCHAN_TEST_PROGS_H */
