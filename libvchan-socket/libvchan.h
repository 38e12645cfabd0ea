/*
 * libvchan.h - the Qubes libvchan API, implemented over Unix domain sockets.
 *
 * SPDX-License-Identifier: MIT
 * Copyright (c) 2026 The vchan developers
 *
 * Permission is hereby granted, free of charge, to any person obtaining a copy of this
 * software and associated documentation files (the "Software"), to deal in the Software
 * without restriction, including without limitation the rights to use, copy, modify,
 * merge, publish, distribute, sublicense, and/or sell copies of the Software, and to
 * permit persons to whom the Software is furnished to do so, subject to the following
 * conditions: The above copyright notice and this permission notice shall be included in
 * all copies or substantial portions of the Software.
 * THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED.
 *
 * This is a drop-in replacement for libvchan-socket and libvchan-socket-simple
 * (QubesOS/qubes-core-vchan-socket): the same functions, the same socket paths, the
 * same wire (a plain AF_UNIX stream with no header), with the semantics of Xen's
 * libvchan as wrapped by qubes-core-vchan-xen. The behaviour contract is the project's
 * SPEC.md; the algorithm is docs/DESIGN.md.
 *
 * Addressing: the socket is $VCHAN_SOCKET_DIR/vchan.<server_domain>.<client_domain>.<port>.sock
 * (directory default /var/run/vchan). The local domain is $VCHAN_DOMAIN (decimal,
 * 0 <= d < 32752, default 0). Peers (server side) and servers (client side) are trusted
 * only if their uid is ours or root, unless VCHAN_ALLOW_ANY_UID is set to a value other
 * than "" or "0".
 *
 * Conventions for every function below:
 *  - A NULL handle, or a handle used after libvchan_close() returned, is the caller's
 *    bug: the behaviour is undefined (the library does not check).
 *  - Failures set errno; the library never prints. EINTR is retried internally and never
 *    reported; SIGPIPE is never raised.
 *  - All descriptors are close-on-exec.
 *  - Thread safety: any function may be called from any thread. libvchan_close() may be
 *    called while other threads are blocked in libvchan_read/recv/write/send/wait or
 *    libvchan_client_init_async_finish on the same handle: those calls return -1 with
 *    errno EBADF promptly. No call may *start* on a handle after close() has been called.
 *    Concurrent reads (or concurrent writes) on one handle are memory-safe, but the order
 *    in which their bytes interleave is unspecified.
 *  - Size arguments: libvchan_read() clamps to the read ring, so any size_t is fine;
 *    libvchan_write(), libvchan_send() and libvchan_recv() fail with EINVAL if size
 *    exceeds INT_MAX (the return value could not represent the count).
 *  - Bytes accepted by write/send are delivered by the library even after close(), as long
 *    as the process lives: a helper thread, started only while bytes wait in user space,
 *    delivers them. If the process exits first, bytes still held in user space are lost.
 */
#ifndef LIBVCHAN_SOCKET_LIBVCHAN_H
#define LIBVCHAN_SOCKET_LIBVCHAN_H

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A file descriptor to poll()/select() for readability. */
typedef int EVTCHN;

/* Return values of libvchan_is_open(). */
#define VCHAN_DISCONNECTED 0 /* the peer closed or died; final */
#define VCHAN_CONNECTED 1    /* both ends are there */
#define VCHAN_WAITING 2      /* server: no client yet; client: still connecting (async) */

struct libvchan;
typedef struct libvchan libvchan_t;

/*
 * Start a server for a client in domain `domain` on `port`. Binds and listens, then
 * returns at once in state VCHAN_WAITING. `read_min`/`write_min` size the server's
 * receive and send rings with Xen's rules (SPEC section 6).
 * Returns a handle, or NULL with errno:
 *   EINVAL       domain not in 0..32751, port < 0, $VCHAN_DOMAIN invalid, or a ring
 *                minimum above 2^20;
 *   ENAMETOOLONG the socket path does not fit in sun_path (107 bytes);
 *   ENOENT       the socket directory does not exist;
 *   EEXIST       a symlink or a non-socket file is at the socket path (left untouched);
 *   EADDRINUSE   a live server already listens on the path;
 *   ENOMEM, EMFILE, ... from the system.
 */
libvchan_t *libvchan_server_init(int domain, int port, size_t read_min, size_t write_min);

/*
 * Connect to the server of domain `domain` on `port`, waiting (without busy-waiting)
 * until it exists. The client's rings are 65536/65536 bytes (the wire carries no
 * handshake to learn the server's sizes).
 * Returns a connected handle, or NULL with errno:
 *   EINVAL, ENAMETOOLONG as for libvchan_server_init();
 *   ENOENT       the socket directory does not exist (reported at once);
 *   EACCES       the server runs as an untrusted uid;
 *   others from the system.
 */
libvchan_t *libvchan_client_init(int domain, int port);

/*
 * Start connecting without blocking. Stores in *watch_fd the fd to poll for readability
 * before calling libvchan_client_init_async_finish(); the same fd is later returned by
 * libvchan_fd_for_select(). Returns a handle (state VCHAN_WAITING until finished), or
 * NULL with errno as for libvchan_client_init() (EINVAL also if watch_fd is NULL).
 */
libvchan_t *libvchan_client_init_async(int domain, int port, EVTCHN *watch_fd);

/*
 * Advance an asynchronous connection. Returns 0 once connected, 1 if not connected yet
 * (only when `blocking` is false: poll the watch fd and call again), or -1 with errno
 * (EACCES untrusted server, EBADF closed by another thread, or a system error). After -1
 * the handle can only be closed. Calling it on a connected handle returns 0.
 */
int libvchan_client_init_async_finish(libvchan_t *ctrl, bool blocking);

/*
 * Write up to `size` bytes. Blocking mode (the default): writes all of them, waiting as
 * needed (sizes above the ring are written in parts), and returns `size`. Non-blocking:
 * returns what could be accepted without waiting (0..size, at most the write ring).
 * A server still waiting for its client accepts up to its write ring and delivers the
 * bytes when the client connects.
 * Returns the count, 0 for size 0, or -1 with errno:
 *   EPIPE  the peer is gone (VCHAN_DISCONNECTED);
 *   EBADF  libvchan_close() was called by another thread meanwhile;
 *   EINVAL size > INT_MAX.
 */
int libvchan_write(libvchan_t *ctrl, const void *data, size_t size);

/*
 * Write exactly `size` bytes or nothing. Returns `size` once all are accepted; 0 if they
 * do not fit now and the channel is non-blocking; -1 with errno:
 *   EPIPE    the peer is gone (checked first, even when there is space);
 *   EMSGSIZE blocking, and size exceeds the write ring (it could never fit);
 *   EBADF    closed by another thread meanwhile;
 *   EINVAL   size > INT_MAX.
 * In blocking mode it waits for space. Size 0 returns 0.
 */
int libvchan_send(libvchan_t *ctrl, const void *data, size_t size);

/*
 * Read up to `size` bytes (at most the read ring). Returns 1..size bytes; 0 if nothing
 * is available and the channel is non-blocking (or size is 0); blocking mode waits for
 * data. Returns -1 with errno EPIPE only once the peer is gone and every byte it sent has
 * been read; EBADF if closed by another thread meanwhile.
 */
int libvchan_read(libvchan_t *ctrl, void *data, size_t size);

/*
 * Read exactly `size` bytes. Returns `size`; 0 if fewer are available and the channel is
 * non-blocking (or size is 0); blocking mode waits for them. -1 with errno:
 *   EPIPE    the peer is gone and fewer than `size` bytes are left (nothing consumed:
 *            they stay readable with libvchan_read());
 *   EMSGSIZE blocking, fewer than `size` bytes available and size exceeds the read ring;
 *   EBADF    closed by another thread meanwhile;
 *   EINVAL   size > INT_MAX.
 */
int libvchan_recv(libvchan_t *ctrl, void *data, size_t size);

/*
 * Block until the select fd is readable (data arrived, the peer consumed data, a client
 * connected, the peer closed), clear that readiness, and return 0. On a waiting server it
 * returns once a client has connected. -1 with errno EBADF if closed by another thread
 * meanwhile, or a system error.
 */
int libvchan_wait(libvchan_t *ctrl);

/*
 * Close the channel and release the handle. Never blocks for long and never waits for
 * the peer: bytes already accepted are still delivered to a peer that keeps reading.
 * In a child process that inherited the handle through fork(), it only closes the
 * child's descriptors and frees its memory, leaving the parent's channel untouched.
 * errno is preserved.
 */
void libvchan_close(libvchan_t *ctrl);

/*
 * The fd to poll()/select() for readability; it reads as ready when libvchan_wait()
 * will not block. Its number never changes from init to close. Cannot fail.
 */
EVTCHN libvchan_fd_for_select(libvchan_t *ctrl);

/*
 * VCHAN_WAITING (server without a client yet, or async client not yet connected),
 * VCHAN_CONNECTED, or VCHAN_DISCONNECTED (final; unread data stays readable).
 * A waiting server takes a pending client here, with no other call needed. Cannot fail.
 */
int libvchan_is_open(libvchan_t *ctrl);

/*
 * Bytes that can be read now without blocking, at most the read ring size. 0 on a
 * waiting server. Cannot fail.
 */
int libvchan_data_ready(libvchan_t *ctrl);

/*
 * Bytes that can be written now without blocking, at most the write ring size: a send()
 * or write() of that many bytes right after completes without waiting. 0 once
 * disconnected, and on an async client that is not connected yet. Cannot fail.
 */
int libvchan_buffer_space(libvchan_t *ctrl);

/*
 * Switch between blocking (the default, true) and non-blocking (false) mode for
 * read, recv, write and send. Cannot fail.
 */
void libvchan_set_blocking(libvchan_t *ctrl, bool blocking);

#ifdef __cplusplus
}
#endif

#endif /* LIBVCHAN_SOCKET_LIBVCHAN_H */
