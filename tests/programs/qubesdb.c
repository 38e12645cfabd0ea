/*
 * qubesdb - qubesdb's daemon re-initialising its server whenever its peer goes, and a
 * writer that the driver SIGKILLs and restarts while the daemon keeps going.
 *
 * SPDX-License-Identifier: MIT
 * Copyright (c) 2026 The vchan developers
 *
 * usage: qubesdb daemon DOMAIN PORT RECORD_FILE
 *        qubesdb writer DOMAIN PORT GEN COUNT
 *
 * Daemon, written from the public description of qubesdb-daemon's vchan handling: a server
 * that, when its peer goes (is_open() == 0 after a wait()), closes and calls server_init()
 * again on the same domain and port, forever; its loop is poll(select fd), wait(), then
 * reads of what data_ready() reports. Records are lines "key-G-N\n" (writer generation G,
 * key number N); each complete one is appended to RECORD_FILE and then acknowledged with
 * "ack-G-N\n". "quit-G\n" is answered "bye\n" and ends the daemon (exit 0). Checked: every
 * server_init() succeeds at once (nothing of the old session in the way); a session's keys
 * all come from one generation, newer than every earlier session's (no byte of an old
 * session delivered), numbered 0, 1, 2, ... (none lost or repeated). A record the killed
 * writer left half-written is dropped.
 *
 * Writer (a qubesdb client): client_init(), which must connect at once, then for N = 0, 1,
 * ...: send "key-G-N\n", wait for its ack (poll, wait(), reads), and only then print
 * "key-G-N" on stdout (so the driver knows which keys were acknowledged, even after killing
 * it). COUNT 0: until killed; else COUNT keys, then "quit-G\n", "bye\n" and exit 0.
 *
 * Exit status 1 with the reason on stderr at any deviation; every wait has a deadline
 * ($VCHAN_TEST_TIMEOUT-scaled poll timeouts, alarm() around blocking calls).
 */
#include <stdbool.h>

#include "libvchan.h"
#include "progs.h"

#define LINE_MAX_LEN 64
#define ACC 8192

static double t_limit;

/* a line accumulator: bytes read from the channel, split at '\n' */
struct acc {
	char buf[ACC];
	size_t len;
};

/* read what data_ready() reports into a; returns the bytes read */
static size_t drain(libvchan_t *c, struct acc *a)
{
	size_t total = 0;
	int n;

	while ((n = libvchan_data_ready(c)) > 0) {
		size_t room = ACC - a->len;
		int r;

		if (!room)
			die("%zu bytes without a newline", a->len);
		if ((size_t)n > room)
			n = (int)room;
		guard_start("read of what data_ready() reported", t_limit);
		r = libvchan_read(c, a->buf + a->len, (size_t)n);
		guard_end();
		if (r <= 0)
			die_errno("read(%d) after data_ready() = %d returned %d", n, n, r);
		a->len += (size_t)r;
		total += (size_t)r;
	}
	return total;
}

/* take the first complete line (without '\n') into out; false if there is none */
static bool take_line(struct acc *a, char out[LINE_MAX_LEN + 1])
{
	char *nl = memchr(a->buf, '\n', a->len);
	size_t n;

	if (!nl)
		return false;
	n = (size_t)(nl - a->buf);
	if (n > LINE_MAX_LEN)
		die("a line of %zu bytes: %.*s...", n, 20, a->buf);
	memcpy(out, a->buf, n);
	out[n] = 0;
	memmove(a->buf, nl + 1, a->len - n - 1);
	a->len -= n + 1;
	return true;
}

static int send_str(libvchan_t *c, const char *s)
{
	int r;

	guard_start("send of a line", 2 * t_limit);
	r = libvchan_send(c, s, strlen(s));
	guard_end();
	return r;
}

static int daemon_main(int domain, int port, const char *record)
{
	long long last_gen = -1, keys = 0, dropped = 0;
	double max_reinit = 0;
	int rec = open(record, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);

	if (rec < 0)
		die_errno("open %s", record);
	for (int session = 0;; session++) {
		double t0 = now(), took;
		libvchan_t *c = libvchan_server_init(domain, port, 4096, 4096);
		int fd;
		struct acc a;
		long long gen = -1, next = 0;
		bool quit = false;

		took = now() - t0;
		if (!c)
			die_errno("session %d: server_init(%d, %d) again", session, domain, port);
		if (took > max_reinit)
			max_reinit = took;
		a.len = 0;
		fd = libvchan_fd_for_select(c);
		for (;;) {
			struct pollfd p = { .fd = fd, .events = POLLIN };
			char line[LINE_MAX_LEN + 1];
			int state;

			/* a new writer starts at once, the old one writes without a pause */
			if (poll_until(&p, 1, now() + 2 * t_limit) == 0)
				die("session %d: nothing happened for %.1f s (is_open %d)", session,
				    2 * t_limit, libvchan_is_open(c));
			guard_start("wait() after the fd polled readable", t_limit);
			if (libvchan_wait(c) < 0)
				die_errno("session %d: wait()", session);
			guard_end();
			state = libvchan_is_open(c);
			if (state == VCHAN_WAITING)
				continue;
			drain(c, &a); /* bytes that came before a disconnect stay readable */
			while (take_line(&a, line)) {
				long long g, n;
				char ack[LINE_MAX_LEN + 8];
				int end;

				if (sscanf(line, "quit-%lld%n", &g, &end) == 1 && !line[end]) {
					if (g != gen)
						die("session %d: quit-%lld from writer %lld", session, g,
						    gen);
					if (send_str(c, "bye\n") != 4)
						die_errno("session %d: send of bye", session);
					quit = true;
					break;
				}
				if (sscanf(line, "key-%lld-%lld%n", &g, &n, &end) != 2 || line[end])
					die("session %d: not a record: \"%s\"", session, line);
				if (gen < 0) {
					if (g <= last_gen)
						die("session %d: first record \"%s\" is from writer "
						    "%lld, not newer than the last session's %lld (a "
						    "byte of an old session?)",
						    session, line, g, last_gen);
					gen = g;
				}
				if (g != gen || n != next)
					die("session %d: record \"%s\", expected key-%lld-%lld", session,
					    line, gen, next);
				next++;
				keys++;
				/* recorded before it is acknowledged */
				snprintf(ack, sizeof(ack), "%s\n", line);
				if (write(rec, ack, strlen(ack)) != (ssize_t)strlen(ack))
					die_errno("write to %s", record);
				snprintf(ack, sizeof(ack), "ack-%lld-%lld\n", g, n);
				if (send_str(c, ack) != (int)strlen(ack)) {
					if (libvchan_is_open(c) != VCHAN_DISCONNECTED)
						die_errno("session %d: send of \"%s\"", session, ack);
					break; /* the writer is gone: its loss */
				}
			}
			if (quit)
				break;
			if (state == VCHAN_DISCONNECTED && !libvchan_data_ready(c))
				break; /* the peer went: close, and serve again */
		}
		dropped += (long long)a.len;
		libvchan_close(c);
		if (quit) {
			fprintf(stderr,
				"%s: ok, %d sessions, %lld keys recorded, %lld bytes of half-written "
				"records dropped, server_init again max %.1f ms\n",
				prog_name, session + 1, keys, dropped, max_reinit * 1e3);
			return 0;
		}
		if (gen >= 0)
			last_gen = gen;
	}
}

static int writer_main(int domain, int port, long long gen, long long count)
{
	double t0 = now(), took;
	libvchan_t *c;
	struct acc a;
	int fd;

	guard_start("client_init", 2 * t_limit);
	c = libvchan_client_init(domain, port);
	guard_end();
	took = now() - t0;
	if (!c)
		die_errno("client_init(%d, %d)", domain, port);
	if (took > scaled(1))
		die("client_init took %.3f s (the daemon re-inits as soon as its peer goes)", took);
	if (libvchan_is_open(c) != VCHAN_CONNECTED)
		die("is_open() = %d after client_init", libvchan_is_open(c));
	fd = libvchan_fd_for_select(c);
	a.len = 0;
	for (long long n = 0;; n++) {
		char line[LINE_MAX_LEN + 1], want[LINE_MAX_LEN + 1];
		bool quitting = count && n == count;

		if (quitting) {
			snprintf(line, sizeof(line), "quit-%lld\n", gen);
			snprintf(want, sizeof(want), "bye");
		} else {
			snprintf(line, sizeof(line), "key-%lld-%lld\n", gen, n);
			snprintf(want, sizeof(want), "ack-%lld-%lld", gen, n);
		}
		if (send_str(c, line) != (int)strlen(line))
			die_errno("send of %s", line);
		for (;;) {
			struct pollfd p = { .fd = fd, .events = POLLIN };
			char got[LINE_MAX_LEN + 1];

			if (take_line(&a, got)) {
				if (strcmp(got, want))
					die("got \"%s\", expected \"%s\"", got, want);
				break;
			}
			if (poll_until(&p, 1, now() + t_limit) == 0)
				die("no \"%s\" within %.1f s", want, t_limit);
			guard_start("wait() after the fd polled readable", t_limit);
			if (libvchan_wait(c) < 0)
				die_errno("wait()");
			guard_end();
			drain(c, &a);
			if (!libvchan_is_open(c) && !libvchan_data_ready(c) && !memchr(a.buf, '\n', a.len))
				die("the daemon went away while we waited for \"%s\"", want);
		}
		if (quitting)
			break;
		/* acknowledged: tell the driver (one write, atomic on a pipe) */
		if (write(1, line, strlen(line)) != (ssize_t)strlen(line))
			die_errno("write to stdout");
		if (!count && now() - t0 > 4 * t_limit)
			die("not killed within %.1f s", 4 * t_limit);
	}
	libvchan_close(c);
	fprintf(stderr, "%s: ok, %lld keys acknowledged, connected in %.1f ms\n", prog_name,
		count, took * 1e3);
	return 0;
}

int main(int argc, char **argv)
{
	static char name[64];

	snprintf(name, sizeof(name), "qubesdb %s", argc > 1 ? argv[1] : "");
	prog_name = name;
	t_limit = test_timeout();
	if (argc == 5 && !strcmp(argv[1], "daemon"))
		return daemon_main((int)arg_int(argv[2], "domain", 0, 32751),
				   (int)arg_int(argv[3], "port", 0, 1 << 30), argv[4]);
	if (argc == 6 && !strcmp(argv[1], "writer"))
		return writer_main((int)arg_int(argv[2], "domain", 0, 32751),
				   (int)arg_int(argv[3], "port", 0, 1 << 30),
				   arg_int(argv[4], "generation", 0, 1 << 30),
				   arg_int(argv[5], "count", 0, 1 << 30));
	fprintf(stderr, "usage: qubesdb daemon DOMAIN PORT RECORD_FILE\n"
			"       qubesdb writer DOMAIN PORT GEN COUNT\n");
	return 2;
}
