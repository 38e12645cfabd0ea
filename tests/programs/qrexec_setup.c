/*
 * qrexec_setup - the connection set-up of qrexec's vchans, round after round.
 *
 * SPDX-License-Identifier: MIT
 * Copyright (c) 2026 The vchan developers
 *
 * usage: qrexec_setup server          FLAVOUR DOMAIN PORT ROUNDS SYNC
 *        qrexec_setup client-async    FLAVOUR DOMAIN PORT ROUNDS SYNC
 *        qrexec_setup client-blocking FLAVOUR DOMAIN PORT ROUNDS SYNC
 *
 * FLAVOUR "daemon": the server sends a hello right after server_init, before any client
 * exists, and the client answers it with its own (qrexec-daemon and the agent's control
 * connection). "data": the server sends nothing first and the client sends its hello as soon
 * as it is connected (a data connection where the remote end speaks first): nothing but
 * the connection itself can then make the client's watch fd readable.
 * Round r uses port PORT + r. SYNC (see progs.h) orders the two ends in every round: the
 * driver gives the server "give:FD" and the client "take:FD" for "server listening first",
 * the reverse for "client first"; the token is written right after the server's init (and
 * hello), or right after the client's client_init_async (before client_init, which blocks).
 *
 * Server, written from the public description of qrexec (the daemon sends its hello right
 * after server_init; qrexec-client, server of a data connection, waits for the client with
 * one poll and one wait, reads the client's hello, sends its own, asks buffer_space() and
 * polls before it sends the prefix data):
 *   server_init; (daemon) send(hello) before any client exists; ONE poll(fd_for_select, POLLIN,
 *   10 s scaled) and ONE wait(), then the channel is taken as connected; blocking recv of
 *   the client's hello; send of its peer info; buffer_space(); poll(fd, POLLIN, 10 s scaled),
 *   which must not stall (the client's hello is an event of its own, SPEC section 5); wait();
 *   send of a prefix header and write of the prefix data; blocking recv of the client's ack.
 *   From "connected" to "prefix sent" must take far less than the poll timeout.
 * Client, as libqrexec's vchan_timeout.c connects (client-async): client_init_async, then
 *   poll(watch_fd, POLLIN | POLLHUP, time left) and client_init_async_finish(ctrl, true) only
 *   once the watch fd polled readable; with the server already listening it must connect at
 *   once. client-blocking: plain client_init. Then (daemon) a blocking recv of the server's
 *   hello; at once a send of its own (often before the server's wait() has even run: the
 *   race these rounds repeat); blocking recvs of the peer info and the prefix; a send of an
 *   ack.
 *
 * Rounds differ in two pauses, as of a program descheduled at that point:
 *  - the server's, between its first poll and its wait() (0, 3, 15 or 40 ms by round r % 4):
 *    the client's hello then arrives before or after the server's wait(), whatever the
 *    relative speed of the two programs;
 *  - the client's, after sending its hello, in rounds r % 4 == 1 (100 ms, scaled). Its read
 *    of the peer info is a consumption the server asked for (buffer_space()), so it makes
 *    the server's fd readable too and, when it comes late, would hide a lost hello event;
 *    in those rounds the server's poll must return within half that pause.
 *
 * Exit status 0 when every round went as described; 1, with the reason on stderr, at the
 * first deviation. Every wait has a deadline: poll timeouts (qrexec's 10 s, scaled by
 * $VCHAN_TEST_TIMEOUT), and alarm() around the calls that block (recv, wait, client_init).
 * A call that waits for the other end gets twice that, so that when one end detects the
 * deviation it is the one that reports it first.
 */
#include <stdbool.h>

#include "libvchan.h"
#include "progs.h"

enum {
	T_HELLO_SERVER = 0x101, /* the server's handshake, sent before any client exists */
	T_HELLO_CLIENT = 0x102, /* the client's handshake */
	T_PEER_INFO = 0x103,    /* the server's own hello, after reading the client's */
	T_PREFIX = 0x104,       /* prefix data follows */
	T_ACK = 0x105,          /* the client got the prefix */
};

#define PREFIX_LEN 6000 /* more than a page, less than the 64 KiB ring */

/* server's pause between its poll and its wait() for the client, by round */
static const unsigned race_delay_us[4] = { 0, 3000, 15000, 40000 };

/* the client's pause after its hello, in rounds r % 4 == 1 (scaled seconds) */
#define CLIENT_PAUSE 0.1
#define CLIENT_PAUSES(r) ((r) % 4 == 1)

static double t_limit; /* $VCHAN_TEST_TIMEOUT: qrexec's 10 s timeouts, scaled */
static bool daemon_flavour;


static void send_exact(libvchan_t *c, const void *buf, size_t n, const char *what)
{
	int r;

	guard_start(what, 2 * t_limit);
	r = libvchan_send(c, buf, n);
	guard_end();
	if (r != (int)n)
		die_errno("%s: send(%zu) returned %d", what, n, r);
}

static void send_hdr(libvchan_t *c, uint32_t type, uint32_t len, const char *what)
{
	unsigned char h[8];

	hdr_pack(h, type, len);
	send_exact(c, h, sizeof(h), what);
}

static void expect_hdr(libvchan_t *c, uint32_t type, uint32_t len, const char *what)
{
	unsigned char h[8];
	struct hdr got;

	recv_exact(c, h, sizeof(h), 2 * t_limit, what);
	got = hdr_unpack(h);
	if (got.type != type || got.len != len)
		die("%s: got header (0x%x, %u), expected (0x%x, %u)", what, got.type, got.len, type,
		    len);
}

static int do_wait(libvchan_t *c, const char *what, double *took)
{
	double t0 = now();
	int r;

	guard_start(what, t_limit);
	r = libvchan_wait(c);
	guard_end();
	*took = now() - t0;
	return r;
}

static void server(int domain, int port, int rounds, const char *sync)
{
	double max_setup = 0, max_poll = 0, max_wait = 0;

	for (int r = 0; r < rounds; r++) {
		libvchan_t *c;
		struct pollfd p;
		unsigned char prefix[PREFIX_LEN];
		struct stream *st;
		double t_conn, t0, took;
		int n, space, state;

		st = stream_new((uint64_t)r + 1); /* the prefix, ready before the clock starts */
		stream_fill(st, 0, prefix, sizeof(prefix));
		free(st);
		sync_take(sync, now() + t_limit);
		c = libvchan_server_init(domain, port + r, 65536, 65536);
		if (!c)
			die_errno("round %d: server_init(%d, %d)", r, domain, port + r);
		/* the daemon's hello goes out before any client exists: a WAITING server buffers */
		if (daemon_flavour)
			send_hdr(c, T_HELLO_SERVER, (uint32_t)r, "send of the hello before any client");
		sync_give(sync);

		/* qrexec: one poll, one wait, then the channel is taken as connected */
		p.fd = libvchan_fd_for_select(c);
		p.events = POLLIN;
		n = poll_until(&p, 1, now() + t_limit);
		if (n == 0)
			die("round %d: no client connection showed on the select fd within %.1f s",
			    r, t_limit);
		/* a server may be descheduled here: in 3 rounds of 4 the client's hello (sent as
		 * soon as it is connected) then lands before the wait(), whatever the speeds */
		usleep(race_delay_us[r % 4]);
		if (do_wait(c, "wait() for the client (the fd polled readable)", &took) < 0)
			die_errno("round %d: wait() for the client", r);
		t_conn = now();
		state = libvchan_is_open(c);
		if (state != VCHAN_CONNECTED)
			die("round %d: one poll and one wait() returned, yet is_open() = %d, not "
			    "connected (a WAITING server's fd must be readable only once a client "
			    "has connected, SPEC section 5)",
			    r, state);

		expect_hdr(c, T_HELLO_CLIENT, (uint32_t)r, "blocking recv of the client's hello");
		send_hdr(c, T_PEER_INFO, (uint32_t)r, "send of the peer info");
		space = libvchan_buffer_space(c);
		if (space < 8 + PREFIX_LEN)
			die("round %d: buffer_space() = %d right after connecting, less than %d", r,
			    space, 8 + PREFIX_LEN);

		/* qrexec-client's loop polls before it sends the prefix data */
		t0 = now();
		p.revents = 0;
		n = poll_until(&p, 1, now() + t_limit);
		took = now() - t0;
		if (n == 0)
			die("round %d: the poll before the prefix data timed out after %.1f s (the "
			    "client's hello must be an event of its own, not merged with the "
			    "connection: SPEC section 5)",
			    r, took);
		if (took > max_poll)
			max_poll = took;
		if (CLIENT_PAUSES(r) && took > scaled(CLIENT_PAUSE) / 2)
			die("round %d: the poll before the prefix data returned only after %.3f s, when "
			    "the paused client read our peer info (the client's hello must be an "
			    "event of its own, not merged with the connection: SPEC section 5)",
			    r, took);
		if (do_wait(c, "wait() after the fd polled readable", &took) < 0)
			die_errno("round %d: wait()", r);
		if (took > max_wait)
			max_wait = took;
		if (took > scaled(1))
			die("round %d: wait() took %.3f s after the fd polled readable", r, took);

		send_hdr(c, T_PREFIX, PREFIX_LEN, "send of the prefix header");
		guard_start("write of the prefix data", 2 * t_limit);
		n = libvchan_write(c, prefix, sizeof(prefix));
		guard_end();
		if (n != PREFIX_LEN)
			die_errno("round %d: write of the prefix data returned %d", r, n);
		took = now() - t_conn;
		if (took > max_setup)
			max_setup = took;
		if (took > scaled(2))
			die("round %d: %.3f s from connected to the prefix data sent (qrexec would "
			    "have slept in its poll)",
			    r, took);
		expect_hdr(c, T_ACK, PREFIX_LEN, "blocking recv of the client's ack");
		libvchan_close(c);
	}
	fprintf(stderr,
		"%s (%s): ok %d rounds; connected->prefix max %.1f ms, poll before the prefix "
		"max %.1f ms, wait() max %.1f ms\n",
		prog_name, daemon_flavour ? "daemon" : "data", rounds, max_setup * 1e3,
		max_poll * 1e3, max_wait * 1e3);
}

static void client(bool async, int domain, int port, int rounds, const char *sync)
{
	bool server_first = !strncmp(sync, "take:", 5);
	double max_connect = 0;

	for (int r = 0; r < rounds; r++) {
		libvchan_t *c;
		unsigned char prefix[PREFIX_LEN];
		struct stream *st;
		double t0, took, limit;
		long bad;
		int state;

		/* server first: it listens (and has sent its hello) before we start */
		sync_take(sync, now() + t_limit);
		t0 = now();
		if (async) {
			EVTCHN wfd = -1;

			c = libvchan_client_init_async(domain, port + r, &wfd);
			if (!c)
				die_errno("round %d: client_init_async(%d, %d)", r, domain, port + r);
			sync_give(sync);
			/* libqrexec's vchan_timeout.c: finish() only once the watch fd is readable */
			for (;;) {
				struct pollfd p = { .fd = wfd, .events = POLLIN | POLLHUP };
				int n = poll_until(&p, 1, t0 + t_limit);

				if (n == 0)
					die("round %d: the watch fd of client_init_async never polled "
					    "readable within %.1f s (%s): qrexec's connection timeout",
					    r, t_limit,
					    server_first ? "the server was already listening"
							 : "the server started after us");
				if (p.revents & (POLLERR | POLLNVAL))
					die("round %d: the watch fd polled revents 0x%x", r, p.revents);
				if (!(p.revents & POLLIN))
					die("round %d: the watch fd polled revents 0x%x, no POLLIN", r,
					    p.revents);
				guard_start("client_init_async_finish(ctrl, true)", t_limit);
				n = libvchan_client_init_async_finish(c, true);
				guard_end();
				if (n == 0)
					break;
				if (n < 0)
					die_errno("round %d: client_init_async_finish", r);
			}
		} else {
			sync_give(sync);
			guard_start("client_init", t_limit);
			c = libvchan_client_init(domain, port + r);
			guard_end();
			if (!c)
				die_errno("round %d: client_init(%d, %d)", r, domain, port + r);
		}
		took = now() - t0;
		if (took > max_connect)
			max_connect = took;
		/* listening first: at once; else within 50 ms of the server (SPEC section 2),
		 * which starts as soon as it reads the token */
		limit = server_first ? scaled(1) : scaled(2);
		if (took > limit)
			die("round %d: connecting took %.3f s (%s)", r, took,
			    server_first ? "the server was already listening"
					 : "the server started right after us");
		state = libvchan_is_open(c);
		if (state != VCHAN_CONNECTED)
			die("round %d: is_open() = %d after connecting", r, state);

		if (daemon_flavour)
			expect_hdr(c, T_HELLO_SERVER, (uint32_t)r,
				   "blocking recv of the server's hello");
		/* at once: the server may not have run its wait() yet */
		send_hdr(c, T_HELLO_CLIENT, (uint32_t)r, "send of the client's hello");
		if (CLIENT_PAUSES(r))
			usleep((unsigned)(scaled(CLIENT_PAUSE) * 1e6));
		expect_hdr(c, T_PEER_INFO, (uint32_t)r, "blocking recv of the server's peer info");
		expect_hdr(c, T_PREFIX, PREFIX_LEN, "blocking recv of the prefix header");
		recv_exact(c, prefix, sizeof(prefix), 2 * t_limit, "blocking recv of the prefix data");
		st = stream_new((uint64_t)r + 1);
		bad = stream_mismatch(st, 0, prefix, sizeof(prefix));
		free(st);
		if (bad >= 0)
			die("round %d: prefix data differs at byte %ld", r, bad);
		send_hdr(c, T_ACK, PREFIX_LEN, "send of the ack");
		libvchan_close(c);
	}
	fprintf(stderr, "%s (%s): ok %d rounds; connect max %.1f ms\n", prog_name,
		daemon_flavour ? "daemon" : "data", rounds, max_connect * 1e3);
}

int main(int argc, char **argv)
{
	static char name[64];
	int domain, port, rounds;

	snprintf(name, sizeof(name), "qrexec_setup %s", argc > 1 ? argv[1] : "");
	prog_name = name;
	if (argc != 7) {
		fprintf(stderr, "usage: qrexec_setup server|client-async|client-blocking "
				"daemon|data DOMAIN PORT ROUNDS SYNC\n");
		return 2;
	}
	if (!strcmp(argv[2], "daemon"))
		daemon_flavour = true;
	else if (strcmp(argv[2], "data"))
		die("unknown flavour %s (daemon or data)", argv[2]);
	domain = (int)arg_int(argv[3], "domain", 0, 32751);
	port = (int)arg_int(argv[4], "port", 0, 1 << 30);
	rounds = (int)arg_int(argv[5], "rounds", 1, 100000);
	sync_check(argv[6]);
	t_limit = test_timeout();
	if (!strcmp(argv[1], "server"))
		server(domain, port, rounds, argv[6]);
	else if (!strcmp(argv[1], "client-async"))
		client(true, domain, port, rounds, argv[6]);
	else if (!strcmp(argv[1], "client-blocking"))
		client(false, domain, port, rounds, argv[6]);
	else
		die("unknown role %s", argv[1]);
	return 0;
}
