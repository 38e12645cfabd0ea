/*
 * qrexec_data - qrexec's data loop: stdin to the remote end and the remote end to stdout,
 * both ways at once, through one select loop per end.
 *
 * SPDX-License-Identifier: MIT
 * Copyright (c) 2026 The vchan developers
 *
 * usage: qrexec_data server|client local|remote DOMAIN PORT   (an end of the channel)
 *        qrexec_data gen SEED SIZE      (SIZE bytes of stream SEED on stdout, see progs.h)
 *        qrexec_data verify SEED SIZE   (stdin must be exactly those bytes, then EOF)
 *
 * The driver runs, for each end, `gen | end | verify`: each end copies its stdin to the
 * other and what the other sends to its stdout, so every byte is checked by a verifier.
 *
 * The loop, written from the public description of qrexec's data handling (libqrexec):
 *  - messages are an 8-byte header (type, length) and a payload; a DATA message with length
 *    0 is the end of that direction's input, and the remote end (the service) sends an EXIT
 *    message last;
 *  - every turn asks buffer_space(); stdin is in the poll set only while it is > 8 (room for a
 *    header and at least one byte); when stdin is readable, read at most buffer_space() - 8
 *    bytes, send() the header and write() the payload (blocking mode: the promise of
 *    buffer_space() means neither waits);
 *  - the poll set is stdin, stdout (while output is pending) and the vchan fd; a readable
 *    vchan fd is followed by wait(); data_ready() > 0 turns the poll timeout to zero (so bytes
 *    are read whether the fd is readable or not); messages are read (blocking recv of the
 *    header, then of the payload) only while no output is pending on stdout;
 *  - local end: `!is_open() && !data_ready()` ends the loop (so bytes that arrived before the
 *    remote end closed must still be reported); it must by then have the remote's EOF and EXIT;
 *  - remote end: once its input is sent (EOF included) and the local end's EOF has arrived,
 *    it sends EXIT, closes the channel and exits at once: its last bytes must still arrive.
 * The server waits for its client as qrexec does (poll on the select fd, then wait()).
 *
 * Exit status 0, with a summary on stderr; 1 with the reason on stderr at any deviation. No
 * wait lasts longer than $VCHAN_TEST_TIMEOUT (default 10 s) without something happening.
 */
#include <stdbool.h>

#include "libvchan.h"
#include "progs.h"

enum { T_DATA = 0x190, T_EXIT = 0x193 };

#define BUF 65536
#define HDR 8

static double t_limit;


static void send_hdr(libvchan_t *c, uint32_t type, uint32_t len, const char *what)
{
	unsigned char h[HDR];
	int r;

	hdr_pack(h, type, len);
	guard_start(what, 2 * t_limit);
	r = libvchan_send(c, h, sizeof(h));
	guard_end();
	if (r != HDR)
		die_errno("%s: send(%d) returned %d", what, HDR, r);
}

static void write_all_fd(int fd, const unsigned char *p, size_t n, const char *what)
{
	while (n) {
		ssize_t w = write(fd, p, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			die_errno("%s: write to fd %d", what, fd);
		p += w;
		n -= (size_t)w;
	}
}

static int gen(uint64_t seed, uint64_t size)
{
	static unsigned char buf[BUF];
	struct stream *s = stream_new(seed);

	signal(SIGPIPE, SIG_IGN);
	for (uint64_t off = 0; off < size;) {
		size_t n = size - off < BUF ? (size_t)(size - off) : BUF;

		stream_fill(s, off, buf, n);
		write_all_fd(1, buf, n, "gen: stdout");
		off += n;
	}
	return 0;
}

static int verify(uint64_t seed, uint64_t size)
{
	static unsigned char buf[BUF];
	struct stream *s = stream_new(seed);
	uint64_t got = 0;

	for (;;) {
		ssize_t r = read(0, buf, sizeof(buf));
		long bad;

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			die_errno("verify: read stdin");
		if (r == 0)
			break;
		if (got + (uint64_t)r > size)
			die("verify: more than the %llu bytes expected", (unsigned long long)size);
		bad = stream_mismatch(s, got, buf, (size_t)r);
		if (bad >= 0)
			die("verify: byte %llu differs from stream %llu",
			    (unsigned long long)(got + (uint64_t)bad), (unsigned long long)seed);
		got += (uint64_t)r;
	}
	if (got != size)
		die("verify: EOF after %llu of %llu bytes", (unsigned long long)got,
		    (unsigned long long)size);
	fprintf(stderr, "%s: ok, %llu bytes of stream %llu\n", prog_name,
		(unsigned long long)size, (unsigned long long)seed);
	return 0;
}

static libvchan_t *connect_end(bool is_server, int domain, int port)
{
	libvchan_t *c;

	if (is_server) {
		c = libvchan_server_init(domain, port, BUF, BUF);
		if (!c)
			die_errno("server_init(%d, %d)", domain, port);
		/* as qrexec waits for its data client: poll the select fd, then wait() */
		while (libvchan_is_open(c) == VCHAN_WAITING) {
			struct pollfd p = { .fd = libvchan_fd_for_select(c), .events = POLLIN };

			if (poll_until(&p, 1, now() + 2 * t_limit) == 0)
				die("no client within %.1f s", 2 * t_limit);
			guard_start("wait() for the client", t_limit);
			if (libvchan_wait(c) < 0)
				die_errno("wait() for the client");
			guard_end();
		}
	} else {
		guard_start("client_init", 2 * t_limit);
		c = libvchan_client_init(domain, port);
		guard_end();
		if (!c)
			die_errno("client_init(%d, %d)", domain, port);
	}
	if (libvchan_is_open(c) != VCHAN_CONNECTED)
		die("is_open() = %d after connecting", libvchan_is_open(c));
	return c;
}

static int endpoint(bool is_server, bool remote, int domain, int port)
{
	static unsigned char inbuf[BUF], outbuf[BUF];
	libvchan_t *c = connect_end(is_server, domain, port);
	int vfd = libvchan_fd_for_select(c);
	size_t out_off = 0, out_len = 0;
	bool in_eof = false, peer_eof = false, exit_got = false, out_closed = false;
	unsigned long long sent = 0, received = 0, turns = 0, zero_timeouts = 0;
	double t0 = now();
	int fl = fcntl(1, F_GETFL);

	if (fl < 0 || fcntl(1, F_SETFL, fl | O_NONBLOCK) < 0)
		die_errno("fcntl(stdout, O_NONBLOCK)");
	for (;;) {
		struct pollfd p[3];
		int space, timeout, n;

		if (remote && in_eof && peer_eof && out_closed) {
			unsigned char code[4] = { 0, 0, 0, 0 };
			int w;

			/* the service is done: the exit code, close, exit at once */
			send_hdr(c, T_EXIT, sizeof(code), "send of the EXIT header");
			guard_start("write of the exit code", 2 * t_limit);
			w = libvchan_write(c, code, sizeof(code));
			guard_end();
			if (w != (int)sizeof(code))
				die_errno("write of the exit code returned %d", w);
			libvchan_close(c);
			fprintf(stderr,
				"%s: ok, sent %llu, received %llu bytes in %.2f s, %llu turns, %llu "
				"zero-timeout polls\n",
				prog_name, sent, received, now() - t0, turns, zero_timeouts);
			return 0;
		}
		if (!libvchan_is_open(c) && !libvchan_data_ready(c))
			break; /* qrexec's end test */
		turns++;
		space = libvchan_buffer_space(c); /* qrexec asks every turn */
		p[0].fd = !in_eof && space > HDR ? 0 : -1;
		p[0].events = POLLIN;
		p[1].fd = out_len ? 1 : -1;
		p[1].events = POLLOUT;
		p[2].fd = vfd;
		p[2].events = POLLIN;
		p[0].revents = p[1].revents = p[2].revents = 0;
		timeout = -1;
		if (!out_len && libvchan_data_ready(c) > 0) {
			timeout = 0;
			zero_timeouts++;
		}
		for (;;) {
			n = poll(p, 3, timeout < 0 ? (int)(t_limit * 1000) : 0);
			if (n >= 0 || errno != EINTR)
				break;
		}
		if (n < 0)
			die_errno("poll");
		if (n == 0 && timeout < 0)
			die("nothing happened for %.1f s: sent %llu, received %llu, buffer_space %d, "
			    "data_ready %d, is_open %d, stdin %s, our EOF %s, peer EOF %s, output "
			    "pending %zu",
			    t_limit, sent, received, space, libvchan_data_ready(c),
			    libvchan_is_open(c), in_eof ? "at EOF" : "open", in_eof ? "sent" : "no",
			    peer_eof ? "got" : "no", out_len);
		if (p[2].revents & POLLIN) {
			guard_start("wait() after the vchan fd polled readable", t_limit);
			if (libvchan_wait(c) < 0)
				die_errno("wait()");
			guard_end();
		}
		if (p[2].revents & (POLLERR | POLLNVAL))
			die("the vchan fd polled revents 0x%x", p[2].revents);

		/* pending output -> stdout */
		if (out_len && (p[1].revents & (POLLOUT | POLLERR | POLLHUP))) {
			ssize_t w = write(1, outbuf + out_off, out_len);

			if (w < 0 && errno != EAGAIN && errno != EINTR)
				die_errno("write to stdout");
			if (w > 0) {
				out_off += (size_t)w;
				out_len -= (size_t)w;
			}
		}

		/* vchan -> stdout, while nothing is pending there */
		while (!out_len && libvchan_data_ready(c) > 0) {
			unsigned char h[HDR];
			struct hdr m;

			recv_exact(c, h, HDR, 2 * t_limit, "blocking recv of a header");
			m = hdr_unpack(h);
			if (exit_got)
				die("a message (0x%x) after EXIT", m.type);
			if (m.type == T_EXIT) {
				unsigned char code[4];

				if (remote)
					die("the local end sent EXIT");
				if (m.len != 4)
					die("EXIT message of length %u", m.len);
				recv_exact(c, code, 4, 2 * t_limit, "blocking recv of the exit code");
				if (!peer_eof)
					die("EXIT before the remote's EOF");
				exit_got = true;
				continue;
			}
			if (m.type != T_DATA)
				die("unknown message type 0x%x (after %llu bytes)", m.type, received);
			if (peer_eof)
				die("DATA after the peer's EOF");
			if (m.len > BUF - HDR)
				die("DATA message of %u bytes, more than buffer_space() could promise",
				    m.len);
			if (m.len == 0) {
				peer_eof = true;
				if (close(1) < 0)
					die_errno("close(stdout)");
				out_closed = true;
				continue;
			}
			recv_exact(c, outbuf, m.len, 2 * t_limit, "blocking recv of a payload");
			received += m.len;
			out_off = 0;
			out_len = m.len;
			{
				ssize_t w = write(1, outbuf, out_len);

				if (w < 0 && errno != EAGAIN && errno != EINTR)
					die_errno("write to stdout");
				if (w > 0) {
					out_off += (size_t)w;
					out_len -= (size_t)w;
				}
			}
		}

		/* stdin -> vchan, at most what buffer_space() promises */
		if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
			space = libvchan_buffer_space(c);
			if (space > HDR) {
				size_t want = (size_t)space - HDR < BUF ? (size_t)space - HDR : BUF;
				ssize_t r;
				int w;

				do
					r = read(0, inbuf, want);
				while (r < 0 && errno == EINTR);
				if (r < 0)
					die_errno("read stdin");
				if (r == 0) {
					in_eof = true;
					send_hdr(c, T_DATA, 0, "send of our EOF");
				} else {
					send_hdr(c, T_DATA, (uint32_t)r, "send of a DATA header");
					guard_start("write of a payload", 2 * t_limit);
					w = libvchan_write(c, inbuf, (size_t)r);
					guard_end();
					if (w != (int)r)
						die_errno("write of %zd payload bytes returned %d", r, w);
					sent += (unsigned long long)r;
				}
			}
		}
	}
	/* the peer closed and everything it sent has been read */
	if (remote)
		die("the local end closed first (sent %llu, received %llu bytes, peer EOF %s)",
		    sent, received, peer_eof ? "got" : "no");
	if (!in_eof)
		die("the remote end closed before our input was all sent (%llu bytes sent)", sent);
	if (!peer_eof || !exit_got)
		die("the channel ended without the remote's %s (received %llu bytes)",
		    peer_eof ? "EXIT" : "EOF", received);
	libvchan_close(c);
	fprintf(stderr,
		"%s: ok, sent %llu, received %llu bytes in %.2f s, %llu turns, %llu zero-timeout "
		"polls\n",
		prog_name, sent, received, now() - t0, turns, zero_timeouts);
	return 0;
}

int main(int argc, char **argv)
{
	static char name[64];

	snprintf(name, sizeof(name), "qrexec_data %s%s%s", argc > 1 ? argv[1] : "",
		 argc > 2 && argv[1][0] != 'g' && argv[1][0] != 'v' ? " " : "",
		 argc > 2 && argv[1][0] != 'g' && argv[1][0] != 'v' ? argv[2] : "");
	prog_name = name;
	t_limit = test_timeout();
	if (argc == 4 && !strcmp(argv[1], "gen"))
		return gen((uint64_t)arg_int(argv[2], "seed", 0, INT64_MAX),
			   (uint64_t)arg_int(argv[3], "size", 0, INT64_MAX));
	if (argc == 4 && !strcmp(argv[1], "verify"))
		return verify((uint64_t)arg_int(argv[2], "seed", 0, INT64_MAX),
			      (uint64_t)arg_int(argv[3], "size", 0, INT64_MAX));
	if (argc == 5 && (!strcmp(argv[1], "server") || !strcmp(argv[1], "client")) &&
	    (!strcmp(argv[2], "local") || !strcmp(argv[2], "remote")))
		return endpoint(!strcmp(argv[1], "server"), !strcmp(argv[2], "remote"),
				(int)arg_int(argv[3], "domain", 0, 32751),
				(int)arg_int(argv[4], "port", 0, 1 << 30));
	fprintf(stderr, "usage: qrexec_data server|client local|remote DOMAIN PORT\n"
			"       qrexec_data gen|verify SEED SIZE\n");
	return 2;
}
