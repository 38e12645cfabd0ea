/*
 * vchan_ops_fuzz.c - a fuzz target for libvchan-socket's API, driven by operation sequences.
 *
 * SPDX-License-Identifier: MIT
 *
 * One input is one operation sequence played on one channel inside this process:
 *
 *   byte 0      mode: bit 0 = the client end is a raw AF_UNIX socket (a hostile peer whose
 *               bytes come from the input) instead of the library; bit 1 = our library
 *               end is the client (raw mode only); bits 2-7 pick read_min/write_min;
 *   byte 1      early: bytes the server writes while WAITING (x 64)
 *   then ops    1 opcode byte (low 4 bits: operation, bit 4: end, bit 5: flag) and, for
 *               sized operations, 2 size bytes (little-endian; bit 15 scales by 8).
 *
 * Every return value is checked against a model (SPEC section 4): counts, sizes 0,
 * EPIPE/EMSGSIZE, buffer_space() and data_ready() promises, and every delivered byte
 * against the stream that was accepted; a blocking call is only made when the model
 * says it must return. A violated check abort()s with a message; a hang is caught by
 * alarm() and also abort()s; memory errors are ASan's. At the end every accepted byte must
 * arrive (if its reader is still open) and the process must hold no more descriptors
 * than before.
 *
 * Builds: with clang's libFuzzer (-DVCHAN_LIBFUZZER -fsanitize=fuzzer,address), or with
 * gcc as a plain driver whose main() plays every file (or directory of files) given on the
 * command line; tests/fuzz/fuzz.py generates random inputs for it.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "libvchan.h"

#define CLIENT_RING 65536
#define MAX_RAW (1 << 22) /* bytes a raw peer may send per input */
#define HANG_SECONDS 20

static const size_t MINS[8] = {0, 1024, 2048, 4096, 5000, 16384, 65536, 100000};

static const char *cur_op = "setup";
static long cur_step;
static unsigned long long total_ops, total_bytes, total_raw_inputs;

__attribute__((format(printf, 1, 2), noreturn)) static void fail(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "vchan-fuzz: step %ld (%s): ", cur_step, cur_op);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    abort();
}

#define CHECK(cond, ...) \
    do { \
        if (!(cond)) \
            fail(__VA_ARGS__); \
    } while (0)

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "vchan-fuzz: a call hung (alarm)\n";
    ssize_t r = write(2, msg, sizeof msg - 1);
    (void)r;
    abort();
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void pause_ms(int ms)
{
    struct timespec ts = {0, ms * 1000000L};
    nanosleep(&ts, NULL);
}

/* byte i of stream s: position-dependent, so loss, duplication and reordering show */
static uint8_t pat(int s, uint64_t i)
{
    uint64_t x = (i + (uint64_t)s * 0x9e3779b97f4a7c15ULL) * 0xbf58476d1ce4e5b9ULL;
    return (uint8_t)(x >> 56);
}

static void fill(int s, uint64_t off, uint8_t *buf, size_t n)
{
    for (size_t i = 0; i < n; i++)
        buf[i] = pat(s, off + i);
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    if (!d)
        return -1;
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

static void server_rings(size_t rmin, size_t wmin, size_t *rd, size_t *wr)
{
    size_t r = 4096, w = 4096;
    while (r < rmin)
        r *= 2;
    while (w < wmin)
        w *= 2;
    if (rmin <= 1024 && wmin <= 2048) {
        r = 1024;
        w = 2048;
    } else if (rmin <= 2048 && wmin <= 1024) {
        r = 2048;
        w = 1024;
    } else if (rmin <= 2048) {
        r = 2048;
    } else if (wmin <= 2048) {
        w = 2048;
    }
    *rd = r;
    *wr = w;
}

/* ------------------------------------------------------------------------------ model */

struct end {
    libvchan_t *h; /* library end, or NULL */
    int raw;       /* raw socket end, or -1 */
    int fd;        /* select fd (library) */
    int closed;    /* this end was closed */
    int gone;      /* this end has seen its peer disconnect */
    int blocking;
    int shut;      /* raw: shut down its writing side or was reset */
    size_t read_ring, write_ring;
    uint64_t sent; /* bytes accepted from this end */
    uint64_t got;  /* bytes of this end's stream delivered to the other end */
    long space;    /* last buffer_space() still promised, or -1 */
    long ready;    /* last data_ready() still valid, or -1 */
};

static struct end E[2];
static uint8_t *raw_sent;  /* the raw peer's bytes (they come from the input) */
static uint8_t *buf;       /* scratch */
static size_t bufsz;
static char sockdir[64];
static int port_counter;

static uint64_t avail(int e) { return E[1 - e].sent - E[1 - e].got; }
static int lib(int e) { return E[e].h != NULL && !E[e].closed; }

static void touch(int e)
{
    E[e].space = -1;
    E[e].ready = -1;
}

/* e read n bytes into p: they must be the next bytes of the other end's stream */
static void deliver(int e, const uint8_t *p, size_t n)
{
    int o = 1 - e;
    CHECK(n <= avail(e), "read %zu bytes but only %llu were ever written", n,
          (unsigned long long)avail(e));
    for (size_t i = 0; i < n; i++) {
        uint8_t want = E[o].raw >= 0 || E[o].h == NULL ? raw_sent[E[o].got + i]
                                                        : pat(o, E[o].got + i);
        CHECK(p[i] == want, "wrong byte at offset %llu of stream %d",
              (unsigned long long)(E[o].got + i), o);
    }
    E[o].got += n;
    total_bytes += n;
}

/* after the other end closed: this end must report DISCONNECTED promptly */
static void expect_gone(int e)
{
    if (!lib(e) || E[e].gone)
        return;
    double end = now() + 2.0;
    while (libvchan_is_open(E[e].h) != VCHAN_DISCONNECTED) {
        CHECK(now() < end, "end %d not DISCONNECTED 2 s after its peer left", e);
        pause_ms(1);
    }
    E[e].gone = 1;
    touch(e);
}

static void ensure_buf(size_t n)
{
    if (n > bufsz) {
        buf = realloc(buf, n);
        CHECK(buf != NULL, "out of memory");
        bufsz = n;
    }
}

/* ---------------------------------------------------------------------------- library ops */

static void op_write(int e, size_t size, int send)
{
    cur_op = send ? "send" : "write";
    struct end *x = &E[e];
    long space = x->space;
    touch(e);
    ensure_buf(size + 1);
    fill(e, x->sent, buf, size);
    int (*fn)(libvchan_t *, const void *, size_t) = send ? libvchan_send : libvchan_write;
    if (size == 0) {
        CHECK(fn(x->h, buf, 0) == 0, "size 0 did not return 0");
        return;
    }
    if (x->gone) {
        errno = 0;
        CHECK(fn(x->h, buf, size) == -1 && errno == EPIPE, "write to a gone peer: errno %d",
              errno);
        return;
    }
    int n;
    if (x->blocking) {
        if (send && size > x->write_ring) {
            n = fn(x->h, buf, size);
            CHECK(n == -1 && errno == EMSGSIZE, "blocking send above the ring: %d/%d", n,
                  errno);
            return;
        }
        if (space < 0 || size > (size_t)space)
            return; /* it could wait for a reader that is this very thread */
        n = fn(x->h, buf, size);
        CHECK(n == (int)size, "blocking %s of %zu promised bytes returned %d (errno %d)",
              cur_op, size, n, errno);
    } else {
        n = fn(x->h, buf, size);
        CHECK(n >= 0 && (size_t)n <= size, "returned %d for %zu (errno %d)", n, size, errno);
        if (send)
            CHECK(n == 0 || (size_t)n == size, "send returned %d of %zu", n, size);
        if (space >= 0 && size <= (size_t)space)
            CHECK((size_t)n == size, "buffer_space promised %ld, %zu got %d", space, size, n);
    }
    x->sent += (uint64_t)n;
}

static void op_read(int e, size_t size, int exact)
{
    cur_op = exact ? "recv" : "read";
    struct end *x = &E[e];
    long ready = x->ready;
    touch(e);
    ensure_buf(size + 1);
    int (*fn)(libvchan_t *, void *, size_t) = exact ? libvchan_recv : libvchan_read;
    int n;
    if (size == 0) {
        CHECK(fn(x->h, buf, 0) == 0, "size 0 did not return 0");
        return;
    }
    uint64_t av = avail(e);
    if (x->gone) {
        n = fn(x->h, buf, size);
        if (exact) {
            if (size <= av && size <= x->read_ring)
                CHECK((size_t)n == size, "recv %zu of %llu left after close: %d", size,
                      (unsigned long long)av, n);
            else if (size > av)
                CHECK(n == -1, "recv of more than is left after close returned %d", n);
        } else if (av == 0) {
            CHECK(n == -1, "read after the end returned %d", n);
        } else {
            CHECK(n >= 1, "bytes sent before the close not readable (%d)", n);
        }
    } else if (x->blocking) {
        if (exact && size > x->read_ring && size > av) {
            n = fn(x->h, buf, size);
            CHECK(n == -1 && errno == EMSGSIZE, "blocking recv above the ring: %d/%d", n,
                  errno);
            return;
        }
        if (exact ? (size > av || size > x->read_ring) : av == 0)
            return; /* would wait for this very thread */
        n = fn(x->h, buf, size);
        CHECK(exact ? (size_t)n == size : n >= 1, "blocking %s of %zu (%llu sent) gave %d",
              cur_op, size, (unsigned long long)av, n);
    } else {
        n = fn(x->h, buf, size);
        CHECK(n >= 0, "non-blocking %s returned %d (errno %d)", cur_op, n, errno);
        if (exact) {
            CHECK(n == 0 || (size_t)n == size, "recv returned %d of %zu", n, size);
            if (ready >= 0 && size <= (size_t)ready)
                CHECK((size_t)n == size, "data_ready said %ld, recv %zu gave %d", ready, size,
                      n);
        } else if (ready > 0) {
            CHECK(n >= 1, "data_ready said %ld, read gave 0", ready);
        }
    }
    if (n > 0) {
        CHECK(exact || (size_t)n <= x->read_ring, "read %d above the ring", n);
        deliver(e, buf, (size_t)n);
    }
}

static void op_data_ready(int e)
{
    cur_op = "data_ready";
    int dr = libvchan_data_ready(E[e].h);
    uint64_t av = avail(e);
    uint64_t cap = av < E[e].read_ring ? av : E[e].read_ring;
    CHECK(dr >= 0 && (uint64_t)dr <= cap, "data_ready %d, at most %llu", dr,
          (unsigned long long)cap);
    if (E[e].gone)
        CHECK((uint64_t)dr == cap, "data_ready %d after close, %llu left", dr,
              (unsigned long long)cap);
    E[e].ready = dr;
}

static void op_buffer_space(int e)
{
    cur_op = "buffer_space";
    int bs = libvchan_buffer_space(E[e].h);
    CHECK(bs >= 0 && (size_t)bs <= E[e].write_ring, "buffer_space %d > ring %zu", bs,
          E[e].write_ring);
    E[e].space = E[e].gone ? -1 : bs;
}

static void op_wait(int e)
{
    cur_op = "wait";
    struct pollfd p = {E[e].fd, POLLIN, 0};
    if (poll(&p, 1, 0) != 1)
        return;
    CHECK(libvchan_wait(E[e].h) == 0, "wait on a readable fd failed (errno %d)", errno);
    touch(e);
}

static void close_end(int e)
{
    cur_op = "close";
    struct end *x = &E[e];
    if (x->h) {
        double t0 = now();
        libvchan_close(x->h);
        CHECK(now() - t0 < 1.0, "close() blocked");
    } else if (x->raw >= 0) {
        close(x->raw);
        x->raw = -2; /* closed raw end: its bytes still count as raw */
    }
    x->closed = 1;
    expect_gone(1 - e);
}

/* ------------------------------------------------------------------------------ raw ops */

static void raw_send(const uint8_t *p, size_t n)
{
    cur_op = "raw send";
    struct end *x = &E[1];
    if (x->shut || x->sent + n > MAX_RAW)
        return;
    ssize_t k = send(x->raw, p, n, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (k < 0) {
        CHECK(errno == EAGAIN || errno == EPIPE || errno == ECONNRESET, "raw send errno %d",
              errno);
        return;
    }
    memcpy(raw_sent + x->sent, p, (size_t)k);
    x->sent += (uint64_t)k;
}

static void raw_recv(size_t n)
{
    cur_op = "raw recv";
    ensure_buf(n + 1);
    ssize_t k = recv(E[1].raw, buf, n ? n : 1, MSG_DONTWAIT);
    if (k <= 0)
        return;
    /* bytes of the library's stream 0 */
    CHECK((uint64_t)k <= avail(1), "raw peer got %zd bytes, only %llu written", k,
          (unsigned long long)avail(1));
    for (ssize_t i = 0; i < k; i++)
        CHECK(buf[i] == pat(0, E[0].got + (uint64_t)i), "raw peer: wrong byte at %llu",
              (unsigned long long)(E[0].got + (uint64_t)i));
    E[0].got += (uint64_t)k;
}

/* ------------------------------------------------------------------------------ set-up */

static int raw_listen(const char *path)
{
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    size_t len = strlen(path);
    CHECK(len < sizeof a.sun_path, "socket path too long");
    memcpy(a.sun_path, path, len + 1);
    CHECK(s >= 0 && bind(s, (struct sockaddr *)&a, sizeof a) == 0 && listen(s, 1) == 0,
          "raw listen: errno %d", errno);
    return s;
}

static int raw_connect(const char *path)
{
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    size_t len = strlen(path);
    CHECK(len < sizeof a.sun_path, "socket path too long");
    memcpy(a.sun_path, path, len + 1);
    CHECK(s >= 0 && connect(s, (struct sockaddr *)&a, sizeof a) == 0, "raw connect: %d",
          errno);
    return s;
}

static void setup(uint8_t mode, uint8_t early)
{
    int raw = mode & 1, lib_client = raw && (mode & 2);
    size_t rmin = MINS[(mode >> 2) & 7], wmin = MINS[(mode >> 5) & 7];
    int port = port_counter++;
    char path[128];
    snprintf(path, sizeof path, "%s/vchan.0.0.%d.sock", sockdir, port);
    memset(E, 0, sizeof E);
    for (int e = 0; e < 2; e++) {
        E[e].raw = -1;
        E[e].fd = -1;
        E[e].blocking = 1;
        E[e].read_ring = E[e].write_ring = CLIENT_RING;
        touch(e);
    }
    if (lib_client) {
        /* our library end is the client (end 0), the raw peer a listening server */
        int ls = raw_listen(path);
        E[0].h = libvchan_client_init(0, port);
        CHECK(E[0].h != NULL, "client_init: errno %d", errno);
        E[1].raw = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
        CHECK(E[1].raw >= 0, "accept: errno %d", errno);
        close(ls);
        unlink(path);
    } else {
        server_rings(rmin, wmin, &E[0].read_ring, &E[0].write_ring);
        E[0].h = libvchan_server_init(0, port, rmin, wmin);
        CHECK(E[0].h != NULL, "server_init: errno %d", errno);
        size_t n = (size_t)early * 64;
        if (n > E[0].write_ring)
            n = E[0].write_ring;
        if (n) {
            ensure_buf(n);
            fill(0, 0, buf, n);
            CHECK(libvchan_buffer_space(E[0].h) == (int)E[0].write_ring,
                  "WAITING buffer_space is not the ring");
            CHECK(libvchan_send(E[0].h, buf, n) == (int)n, "WAITING send");
            E[0].sent = n;
        }
        if (raw) {
            E[1].raw = raw_connect(path);
        } else {
            E[1].h = libvchan_client_init(0, port);
            CHECK(E[1].h != NULL, "client_init: errno %d", errno);
        }
        double end = now() + 5;
        while (libvchan_is_open(E[0].h) != VCHAN_CONNECTED)
            CHECK(now() < end, "server never CONNECTED");
    }
    for (int e = 0; e < 2; e++)
        if (E[e].h)
            E[e].fd = libvchan_fd_for_select(E[e].h);
}

/* every accepted byte arrives at a reader that is still open */
static void drain(void)
{
    cur_op = "final drain";
    for (int e = 0; e < 2; e++) {
        if (E[e].closed)
            continue;
        double end = now() + 10;
        while (avail(e) > 0) {
            ensure_buf(CLIENT_RING);
            if (E[e].h) {
                libvchan_set_blocking(E[e].h, false);
                int n = libvchan_read(E[e].h, buf, CLIENT_RING);
                CHECK(n >= 0, "read -1 with %llu bytes undelivered",
                      (unsigned long long)avail(e));
                if (n > 0)
                    deliver(e, buf, (size_t)n);
                else
                    pause_ms(1);
            } else {
                uint64_t before = E[0].got;
                raw_recv(CLIENT_RING);
                if (E[0].got == before) {
                    /* a raw peer that shut down or reset may lose what was in flight */
                    if (E[1].shut || E[0].gone)
                        break;
                    pause_ms(1);
                }
            }
            CHECK(now() < end, "%llu bytes never arrived at end %d",
                  (unsigned long long)avail(e), e);
        }
        if (E[e].h && E[e].gone) {
            ensure_buf(1);
            CHECK(libvchan_read(E[e].h, buf, 1) == -1, "no end of stream after the close");
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int fds_before = -1;
    if (!sockdir[0]) {
        const char *d = getenv("VCHAN_SOCKET_DIR");
        if (d && *d) {
            snprintf(sockdir, sizeof sockdir, "%s", d);
        } else {
            snprintf(sockdir, sizeof sockdir, "/tmp/vchan-fuzz.XXXXXX");
            CHECK(mkdtemp(sockdir) != NULL, "mkdtemp");
            setenv("VCHAN_SOCKET_DIR", sockdir, 1);
        }
        unsetenv("VCHAN_DOMAIN");
        signal(SIGALRM, on_alarm);
        raw_sent = malloc(MAX_RAW);
        CHECK(raw_sent != NULL, "out of memory");
    }
    if (size < 2)
        return 0;
    if (fds_before < 0)
        fds_before = count_fds();
    alarm(HANG_SECONDS);
    cur_step = -1;
    setup(data[0], data[1]);
    total_raw_inputs += E[1].raw >= 0;
    size_t i = 2;
    for (cur_step = 0; i < size; cur_step++) {
        uint8_t opc = data[i++];
        total_ops++;
        int e = (opc >> 4) & 1, flag = (opc >> 5) & 1;
        size_t sz = 0;
        int op = opc & 15;
        if (op <= 3 || op == 10 || op == 11) {
            if (i + 2 > size)
                break;
            sz = (size_t)data[i] | ((size_t)(data[i + 1] & 0x7f) << 8);
            if (data[i + 1] & 0x80)
                sz *= 8;
            i += 2;
        }
        if (op == 10 || op == 11 || op == 12 || op == 13) {
            /* raw peer operations (mode 1); on a library pair, act on the library */
            const uint8_t *payload = data + i;
            size_t plen = 0;
            if (op == 10) { /* the next sz input bytes are the raw peer's payload */
                plen = sz < size - i ? sz : size - i;
                i += plen;
            }
            if (E[1].raw < 0) {
                if (op == 10 && lib(1))
                    op_write(1, sz, flag);
                continue;
            }
            if (op == 10) {
                raw_send(payload, plen);
            } else if (op == 11) {
                raw_recv(sz);
            } else if (op == 12 && !E[1].shut) {
                cur_op = "raw shutdown";
                shutdown(E[1].raw, flag ? SHUT_RDWR : SHUT_WR);
                E[1].shut = 1;
                expect_gone(0);
            } else if (op == 13 && flag && !E[1].shut) {
                /* reset: close with unread bytes in our queue */
                E[1].shut = 1;
                close_end(1);
            }
            continue;
        }
        if (!lib(e)) {
            if (lib(1 - e))
                e = 1 - e;
            else
                continue;
        }
        switch (op) {
        case 0: op_write(e, sz, 0); break;
        case 1: op_write(e, sz, 1); break;
        case 2: op_read(e, sz, 0); break;
        case 3: op_read(e, sz, 1); break;
        case 4: op_data_ready(e); break;
        case 5: op_buffer_space(e); break;
        case 6:
            cur_op = "set_blocking";
            libvchan_set_blocking(E[e].h, flag);
            E[e].blocking = flag;
            break;
        case 7: op_wait(e); break;
        case 8:
            cur_op = "is_open";
            CHECK(libvchan_is_open(E[e].h) ==
                      (E[e].gone ? VCHAN_DISCONNECTED : VCHAN_CONNECTED) ||
                      (!E[e].gone && E[1 - e].raw >= 0 && E[1 - e].shut),
                  "is_open %d, gone %d", libvchan_is_open(E[e].h), E[e].gone);
            CHECK(libvchan_fd_for_select(E[e].h) == E[e].fd, "select fd changed");
            break;
        case 9:
            if (flag)
                close_end(e);
            break;
        default: pause_ms(1); break;
        }
    }
    cur_step = -2;
    drain();
    for (int e = 0; e < 2; e++) {
        if (E[e].h && !E[e].closed)
            libvchan_close(E[e].h);
        if (E[e].raw >= 0)
            close(E[e].raw);
    }
    alarm(0);
    /* helper threads may still be delivering to a closed peer: give them a moment */
    double end = now() + 2;
    while (count_fds() > fds_before && now() < end)
        pause_ms(1);
    CHECK(count_fds() <= fds_before, "descriptors leaked: %d > %d", count_fds(), fds_before);
    return 0;
}

#ifndef VCHAN_LIBFUZZER
static size_t run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(2);
    }
    static uint8_t in[1 << 20];
    size_t n = fread(in, 1, sizeof in, f);
    fclose(f);
    fprintf(stderr, "%s\n", path);
    LLVMFuzzerTestOneInput(in, n);
    return 1;
}

int main(int argc, char **argv)
{
    size_t runs = 0;
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE|DIR...\n", argv[0]);
        return 2;
    }
    for (int a = 1; a < argc; a++) {
        struct stat st;
        if (stat(argv[a], &st) == 0 && S_ISDIR(st.st_mode)) {
            struct dirent **names;
            int k = scandir(argv[a], &names, NULL, alphasort);
            for (int j = 0; j < k; j++) {
                if (names[j]->d_name[0] != '.') {
                    char p[PATH_MAX];
                    snprintf(p, sizeof p, "%s/%s", argv[a], names[j]->d_name);
                    runs += run_file(p);
                }
                free(names[j]);
            }
            free(names);
        } else {
            runs += run_file(argv[a]);
        }
    }
    fprintf(stderr, "vchan-fuzz: %zu inputs (%llu with a raw peer), %llu operations, "
            "%llu bytes delivered, no failure\n", runs, total_raw_inputs, total_ops,
            total_bytes);
    if (sockdir[0] && !getenv("VCHAN_FUZZ_KEEP_DIR"))
        rmdir(sockdir);
    return 0;
}
#endif
