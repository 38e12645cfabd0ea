/*
 * gui_loop - the GUI protocol's event loop: the vchan fd and an unrelated fd in one poll set.
 *
 * SPDX-License-Identifier: MIT
 * Copyright (c) 2026 The vchan developers
 *
 * usage: gui_loop server|client DOMAIN PORT MESSAGES
 *
 * Written from the public description of the Qubes GUI agent/daemon loop: one poll() on the
 * vchan fd and on another fd (there the X connection; here a pipe the program itself writes
 * to); when the vchan fd polls readable, wait() (which must not block: the fd said so),
 * then read while data_ready() reports bytes, and handle every complete message. Bytes are
 * read only after the fd polled readable, so an event the library loses shows as a stall.
 *
 * Each end sends MESSAGES messages: an 8-byte header (sequence number, length 0..4000)
 * written with one write() and the body with another; body i is the next `length` bytes of
 * the sender's stream (seed 1 server, 2 client), length mix64(seed ^ i) % 4001. A message is
 * sent when the program reads an 'm' from its own pipe: the client writes 4 of them at the
 * start, and each end writes one more for every message it receives, as long as it has
 * messages left; every 7th message received also writes an 'n' (noise: an event on the
 * second fd that asks for nothing). The client closes when it has sent and received all;
 * the server then sees the channel close (its fd polls readable, is_open() becomes 0).
 *
 * Exit status 0 with a summary on stderr; 1 with the reason on stderr at any deviation
 * (wrong content, a wait() that blocked, nothing happening for $VCHAN_TEST_TIMEOUT s).
 */
#define _GNU_SOURCE /* pipe2 */
#include <stdbool.h>

#include "libvchan.h"
#include "progs.h"

#define MAX_BODY 4000
#define WINDOW 4
#define RING 65536
#define ACC (2 * RING)

static double t_limit;

static uint32_t body_len(uint64_t seed, uint64_t i)
{
	return (uint32_t)(mix64(seed ^ i) % (MAX_BODY + 1));
}

static void pipe_put(int fd, char c)
{
	while (write(fd, &c, 1) != 1)
		if (errno != EINTR)
			die_errno("write to our own pipe");
}

static void write_all(libvchan_t *c, const void *p, size_t n, const char *what)
{
	int w;

	guard_start(what, 2 * t_limit);
	w = libvchan_write(c, p, n);
	guard_end();
	if (w != (int)n)
		die_errno("%s: write(%zu) returned %d", what, n, w);
}

int main(int argc, char **argv)
{
	static unsigned char acc[ACC], body[MAX_BODY];
	static char name[64];
	libvchan_t *c;
	bool is_server;
	int domain, port, vfd, pfd[2];
	long long messages, sent = 0, received = 0, queued = 0, noise = 0;
	long long wakeups = 0, empty = 0, pipe_wakeups = 0;
	uint64_t my_seed, peer_seed, tx_off = 0, rx_off = 0;
	struct stream *tx, *rx;
	size_t acc_len = 0;
	double max_wait = 0, t0;

	snprintf(name, sizeof(name), "gui_loop %s", argc > 1 ? argv[1] : "");
	prog_name = name;
	if (argc != 5 || (strcmp(argv[1], "server") && strcmp(argv[1], "client"))) {
		fprintf(stderr, "usage: gui_loop server|client DOMAIN PORT MESSAGES\n");
		return 2;
	}
	is_server = !strcmp(argv[1], "server");
	domain = (int)arg_int(argv[2], "domain", 0, 32751);
	port = (int)arg_int(argv[3], "port", 0, 1 << 30);
	messages = arg_int(argv[4], "messages", 1, 1 << 30);
	t_limit = test_timeout();
	my_seed = is_server ? 1 : 2;
	peer_seed = is_server ? 2 : 1;
	tx = stream_new(my_seed);
	rx = stream_new(peer_seed);
	if (pipe2(pfd, O_NONBLOCK | O_CLOEXEC) < 0)
		die_errno("pipe2");

	if (is_server) {
		c = libvchan_server_init(domain, port, RING, RING);
		if (!c)
			die_errno("server_init(%d, %d)", domain, port);
	} else {
		guard_start("client_init", 2 * t_limit);
		c = libvchan_client_init(domain, port);
		guard_end();
		if (!c)
			die_errno("client_init(%d, %d)", domain, port);
		for (int i = 0; i < WINDOW && queued < messages; i++, queued++)
			pipe_put(pfd[1], 'm');
	}
	vfd = libvchan_fd_for_select(c);
	t0 = now();

	for (;;) {
		struct pollfd p[2] = {
			{ .fd = vfd, .events = POLLIN },
			{ .fd = pfd[0], .events = POLLIN },
		};
		int n;

		if (sent == messages && received == messages)
			break;
		n = poll_until(p, 2, now() + t_limit);
		if (n == 0)
			die("nothing happened for %.1f s: sent %lld, received %lld of %lld, is_open "
			    "%d, data_ready %d (an event lost?)",
			    t_limit, sent, received, messages, libvchan_is_open(c),
			    libvchan_data_ready(c));
		if (p[0].revents & (POLLERR | POLLNVAL))
			die("the vchan fd polled revents 0x%x", p[0].revents);

		/* the other fd: our own events */
		if (p[1].revents & POLLIN) {
			char ev[64];
			ssize_t r = read(pfd[0], ev, sizeof(ev));

			if (r < 0 && errno != EAGAIN && errno != EINTR)
				die_errno("read of our own pipe");
			pipe_wakeups++;
			for (ssize_t i = 0; i < r; i++) {
				unsigned char h[8];
				uint32_t len;

				if (ev[i] == 'n') {
					noise++;
					continue;
				}
				if (sent >= messages)
					die("asked to send message %lld of %lld", sent, messages);
				len = body_len(my_seed, (uint64_t)sent);
				hdr_pack(h, (uint32_t)sent, len);
				stream_fill(tx, tx_off, body, len);
				write_all(c, h, sizeof(h), "write of a header");
				if (len)
					write_all(c, body, len, "write of a body");
				tx_off += len;
				sent++;
			}
		}

		/* the vchan fd: wait(), then whatever data_ready() reports */
		if (p[0].revents & POLLIN) {
			double t = now(), took;
			bool any = false;
			int ready;

			guard_start("wait() after the vchan fd polled readable", t_limit);
			if (libvchan_wait(c) < 0)
				die_errno("wait()");
			guard_end();
			took = now() - t;
			if (took > max_wait)
				max_wait = took;
			if (took > scaled(1))
				die("wait() took %.3f s after the fd polled readable", took);
			wakeups++;
			while ((ready = libvchan_data_ready(c)) > 0) {
				size_t want = (size_t)ready, off = 0;
				int r;

				if (want > ACC - acc_len)
					want = ACC - acc_len;
				if (!want)
					die("%zu bytes without a complete message", acc_len);
				guard_start("read of what data_ready() reported", t_limit);
				r = libvchan_read(c, acc + acc_len, want);
				guard_end();
				if (r <= 0)
					die_errno("read(%zu) after data_ready() = %d returned %d", want,
						  ready, r);
				acc_len += (size_t)r;
				any = true;
				/* every complete message */
				while (acc_len - off >= 8) {
					struct hdr m = hdr_unpack(acc + off);
					long bad;

					if (m.type != (uint32_t)received)
						die("message %lld arrived with sequence number %u",
						    received, m.type);
					if (m.len != body_len(peer_seed, (uint64_t)received))
						die("message %lld: length %u, expected %u", received,
						    m.len, body_len(peer_seed, (uint64_t)received));
					if (acc_len - off - 8 < m.len)
						break;
					bad = stream_mismatch(rx, rx_off, acc + off + 8, m.len);
					if (bad >= 0)
						die("message %lld: body byte %ld differs", received, bad);
					rx_off += m.len;
					off += 8 + m.len;
					received++;
					if (received > messages)
						die("more than %lld messages", messages);
					if (queued < messages) {
						queued++;
						pipe_put(pfd[1], 'm');
					}
					if (received % 7 == 0)
						pipe_put(pfd[1], 'n');
				}
				memmove(acc, acc + off, acc_len - off);
				acc_len -= off;
			}
			if (!any)
				empty++;
			if (libvchan_is_open(c) != VCHAN_CONNECTED && received < messages &&
			    !libvchan_data_ready(c))
				die("the peer went after %lld of %lld messages (is_open %d)", received,
				    messages, libvchan_is_open(c));
		}
	}

	if (is_server) {
		/* the client closes now: the fd must say so */
		double end = now() + t_limit;

		while (libvchan_is_open(c) != VCHAN_DISCONNECTED) {
			struct pollfd p = { .fd = vfd, .events = POLLIN };

			if (poll_until(&p, 1, end) == 0)
				die("the client's close never showed on the fd (is_open %d)",
				    libvchan_is_open(c));
			guard_start("wait() after the vchan fd polled readable", t_limit);
			if (libvchan_wait(c) < 0)
				die_errno("wait()");
			guard_end();
			if (libvchan_data_ready(c))
				die("%d bytes after the last message", libvchan_data_ready(c));
		}
	}
	libvchan_close(c);
	fprintf(stderr,
		"%s: ok, %lld messages each way in %.2f s; %lld vchan wake-ups (%lld with no "
		"data), %lld pipe wake-ups (%lld noise events), wait() max %.2f ms\n",
		prog_name, messages, now() - t0, wakeups, empty, pipe_wakeups, noise,
		max_wait * 1e3);
	return 0;
}
