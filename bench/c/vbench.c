/*
 * vbench: one end of a benchmark case, driven by `python -m bench` (bench/__main__.py).
 *
 * The same workload code runs over either
 *   --fd N        a raw AF_UNIX stream socket (one end of a socketpair; the baseline), or
 *   --lib PATH    any libvchan shared library, loaded with dlopen (our libvchan-socket.so,
 *                 the reference one, ...), as server (--role server) or client.
 *
 * Cases (identical in every implementation, see bench/README.md):
 *   stream   the server writes --total bytes in --chunk sized blocking writes; the client
 *            reads with a ring-sized buffer and compares every byte with the pattern.
 *   ping     the client sends 64-byte messages, the server checks and echoes them back;
 *            blocking send()/recv().
 *   pingsel  the same, but receiving the way event loops do: poll(fd_for_select),
 *            wait(), data_ready(), recv().
 * --warmup: ping-pongs before the timed ones, or for a stream the bytes of one untimed rep.
 * Each repetition starts with a 1-byte handshake; the timestamps are CLOCK_MONOTONIC (the
 * same clock in both processes) and the CPU time is getrusage(RUSAGE_SELF), which counts
 * every thread of the process. The result is one JSON object on stdout.
 *
 * SPDX-License-Identifier: MIT
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PING 64

/* ----------------------------------------------------------------------- the two APIs */

typedef struct libvchan libvchan_t;

struct ops {
    int (*write)(void *h, const void *data, size_t size);
    int (*send)(void *h, const void *data, size_t size);
    int (*read)(void *h, void *data, size_t size);
    int (*recv)(void *h, void *data, size_t size);
    int (*wait)(void *h);
    int (*fd)(void *h);
    int (*data_ready)(void *h);
    void (*close)(void *h);
};

/* raw socket: the handle points at the fd */
static int raw_write(void *h, const void *data, size_t size)
{
    int fd = *(int *)h;
    size_t done = 0;
    while (done < size) {
        ssize_t k = send(fd, (const char *)data + done, size - done, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        done += (size_t)k;
    }
    return (int)size;
}

static int raw_read(void *h, void *data, size_t size)
{
    for (;;) {
        ssize_t k = read(*(int *)h, data, size);
        if (k < 0 && errno == EINTR)
            continue;
        if (k == 0) {
            errno = EPIPE;
            return -1;
        }
        return (int)k;
    }
}

static int raw_recv(void *h, void *data, size_t size)
{
    size_t done = 0;
    while (done < size) {
        int k = raw_read(h, (char *)data + done, size - done);
        if (k < 0)
            return -1;
        done += (size_t)k;
    }
    return (int)size;
}

static int raw_wait(void *h)
{
    (void)h; /* a plain socket has no event to clear: poll() was the wait */
    return 0;
}

static int raw_fd(void *h) { return *(int *)h; }

static int raw_data_ready(void *h)
{
    int n = 0;
    if (ioctl(*(int *)h, FIONREAD, &n) < 0)
        return -1;
    return n;
}

static void raw_close(void *h) { close(*(int *)h); }

/*
 * --epoll: the raw socket with the floor of the libraries' notification scheme (DESIGN.md,
 * SPEC §5: a read wakes a writer only if it asked): the select fd is an epoll fd holding the
 * socket edge-triggered for EPOLLIN|EPOLLRDHUP only (no EPOLLOUT, so the peer's reads never
 * wake it), and wait() consumes its events without blocking, as the libraries' wait() does
 * after poll() said the fd is readable. The select-driven receive is then poll(epfd),
 * epoll_wait(epfd, 0), FIONREAD, read. A diagnostic: the best our libraries could do.
 */
static int raw_epfd = -1;

static int rawep_wait(void *h)
{
    struct epoll_event ev[4];
    (void)h;
    int r;
    do
        r = epoll_wait(raw_epfd, ev, 4, 0);
    while (r < 0 && errno == EINTR);
    return r < 0 ? -1 : 0;
}

static int rawep_fd(void *h)
{
    (void)h;
    return raw_epfd;
}

static const struct ops raw_ops = {
    raw_write, raw_write, raw_read, raw_recv, raw_wait, raw_fd, raw_data_ready, raw_close,
};

/* a libvchan .so */
static libvchan_t *(*lv_server_init)(int, int, size_t, size_t);
static libvchan_t *(*lv_client_init)(int, int);

static void *must_sym(void *dl, const char *name)
{
    void *p = dlsym(dl, name);
    if (!p) {
        fprintf(stderr, "vbench: %s: %s\n", name, dlerror());
        exit(2);
    }
    return p;
}

static struct ops load_lib(const char *path)
{
    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
        fprintf(stderr, "vbench: dlopen: %s\n", dlerror());
        exit(2);
    }
    struct ops o;
    *(void **)&o.write = must_sym(dl, "libvchan_write");
    *(void **)&o.send = must_sym(dl, "libvchan_send");
    *(void **)&o.read = must_sym(dl, "libvchan_read");
    *(void **)&o.recv = must_sym(dl, "libvchan_recv");
    *(void **)&o.wait = must_sym(dl, "libvchan_wait");
    *(void **)&o.fd = must_sym(dl, "libvchan_fd_for_select");
    *(void **)&o.data_ready = must_sym(dl, "libvchan_data_ready");
    *(void **)&o.close = must_sym(dl, "libvchan_close");
    *(void **)&lv_server_init = must_sym(dl, "libvchan_server_init");
    *(void **)&lv_client_init = must_sym(dl, "libvchan_client_init");
    return o;
}

/* ---------------------------------------------------------------------------- helpers */

static struct ops O;
static void *H;
static char *errmsg;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static bool fail(const char *fmt, ...)
{
    if (errmsg)
        return false;
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&errmsg, fmt, ap) < 0)
        errmsg = "error";
    va_end(ap);
    return false;
}

static bool put(const void *data, size_t n)
{
    int k = O.send(H, data, n);
    if (k != (int)n)
        return fail("send(%zu) returned %d (errno %d)", n, k, errno);
    return true;
}

static bool get(void *data, size_t n)
{
    int k = O.recv(H, data, n);
    if (k != (int)n)
        return fail("recv(%zu) returned %d (errno %d)", n, k, errno);
    return true;
}

/* The select-driven receive of event loops: poll the fd, wait(), data_ready(), recv(). */
static bool get_select(void *data, size_t n)
{
    struct pollfd p = {.fd = O.fd(H), .events = POLLIN};
    for (;;) {
        if (poll(&p, 1, -1) < 0 && errno != EINTR)
            return fail("poll: errno %d", errno);
        if (O.wait(H) < 0)
            return fail("wait: errno %d", errno);
        int ready = O.data_ready(H);
        if (ready < 0)
            return fail("data_ready returned %d (errno %d)", ready, errno);
        if ((size_t)ready >= n)
            break;
    }
    return get(data, n);
}

/* --------------------------------------------------------------------------- the cases */

static unsigned char *pat; /* pattern, with its first 64 KiB repeated after the end */
static size_t plen;

static void load_pattern(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || st.st_size < 65536) {
        fprintf(stderr, "vbench: pattern %s unusable\n", path);
        exit(2);
    }
    plen = (size_t)st.st_size;
    pat = malloc(plen + 65536);
    size_t got = 0;
    while (got < plen) {
        ssize_t k = read(fd, pat + got, plen - got);
        if (k <= 0) {
            fprintf(stderr, "vbench: reading the pattern failed\n");
            exit(2);
        }
        got += (size_t)k;
    }
    memcpy(pat + plen, pat, 65536);
    close(fd);
}

struct rep {
    int64_t t0, t1;
    double cpu;
    bool verified;
    int64_t *rtt;
};

struct args {
    bool server;
    const char *kase;
    size_t chunk, total, ring;
    int reps, count, warmup;
};

static bool stream_rep(const struct args *a, struct rep *r)
{
    char c = 0;
    if (a->server) { /* sender */
        if (!get(&c, 1) || c != 'R')
            return fail("bad start byte");
        double cpu0 = cpu_s();
        r->t0 = now_ns();
        for (size_t off = 0; off < a->total;) {
            size_t n = a->total - off < a->chunk ? a->total - off : a->chunk;
            int k = O.write(H, pat + off % plen, n);
            if (k != (int)n)
                return fail("write(%zu) returned %d (errno %d)", n, k, errno);
            off += n;
        }
        if (!get(&c, 1) || c != 'D')
            return fail("bad end byte");
        r->cpu = cpu_s() - cpu0;
        r->verified = true; /* the receiver's verdict is what counts */
        return true;
    }
    static unsigned char buf[1 << 20];
    size_t want = a->ring < sizeof buf ? a->ring : sizeof buf;
    double cpu0 = cpu_s();
    r->t0 = now_ns();
    if (!put("R", 1))
        return false;
    bool ok = true;
    for (size_t got = 0; got < a->total;) {
        size_t n = a->total - got < want ? a->total - got : want;
        int k = O.read(H, buf, n);
        if (k <= 0)
            return fail("read(%zu) returned %d (errno %d) after %zu bytes", n, k, errno, got);
        size_t off = got % plen;
        /* a read may cross the pattern's end: pat holds 64 KiB past it */
        if ((size_t)k > 65536 || memcmp(buf, pat + off, (size_t)k) != 0)
            ok = false;
        got += (size_t)k;
    }
    r->t1 = now_ns();
    if (!put("D", 1))
        return false;
    r->cpu = cpu_s() - cpu0;
    r->verified = ok;
    return true;
}

static uint64_t seq;

static bool ping_one(const struct args *a, bool sel, int64_t *rtt, bool *ok)
{
    unsigned char buf[PING];
    const unsigned char *msg = pat + (seq++ * PING) % plen;
    if (a->server) {
        if (!(sel ? get_select(buf, PING) : get(buf, PING)))
            return false;
        if (memcmp(buf, msg, PING) != 0)
            *ok = false;
        return put(buf, PING);
    }
    int64_t t = now_ns();
    if (!put(msg, PING) || !(sel ? get_select(buf, PING) : get(buf, PING)))
        return false;
    if (rtt)
        *rtt = now_ns() - t;
    if (memcmp(buf, msg, PING) != 0)
        *ok = false;
    return true;
}

static bool ping_rep(const struct args *a, bool sel, struct rep *r)
{
    bool ok = true;
    double cpu0 = cpu_s();
    r->t0 = now_ns();
    for (int i = 0; i < a->count; i++)
        if (!ping_one(a, sel, r->rtt ? &r->rtt[i] : NULL, &ok))
            return false;
    r->t1 = now_ns();
    r->cpu = cpu_s() - cpu0;
    r->verified = ok;
    return true;
}

/* --------------------------------------------------------------------------------- main */

static void usage(void)
{
    fprintf(stderr,
            "usage: vbench --role server|client --case stream|ping|pingsel --pattern FILE\n"
            "              (--fd N [--epoll] | --lib PATH --domain D --port P)\n"
            "              [--chunk N] [--total N] [--ring N] [--reps N] [--count N] "
            "[--warmup N]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    struct args a = {.chunk = 4096, .total = 1 << 20, .ring = 65536, .reps = 1, .count = 1000,
                     .warmup = 100};
    const char *lib = NULL, *pattern = NULL, *role = NULL;
    int fd = -1, domain = -1, port = -1;
    bool use_epoll = false;
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i];
        if (!strcmp(k, "--epoll")) {
            use_epoll = true;
            continue;
        }
        if (i + 1 >= argc)
            usage();
        const char *v = argv[++i];
        if (!strcmp(k, "--role"))
            role = v;
        else if (!strcmp(k, "--case"))
            a.kase = v;
        else if (!strcmp(k, "--pattern"))
            pattern = v;
        else if (!strcmp(k, "--fd"))
            fd = atoi(v);
        else if (!strcmp(k, "--lib"))
            lib = v;
        else if (!strcmp(k, "--domain"))
            domain = atoi(v);
        else if (!strcmp(k, "--port"))
            port = atoi(v);
        else if (!strcmp(k, "--chunk"))
            a.chunk = strtoull(v, NULL, 0);
        else if (!strcmp(k, "--total"))
            a.total = strtoull(v, NULL, 0);
        else if (!strcmp(k, "--ring"))
            a.ring = strtoull(v, NULL, 0);
        else if (!strcmp(k, "--reps"))
            a.reps = atoi(v);
        else if (!strcmp(k, "--count"))
            a.count = atoi(v);
        else if (!strcmp(k, "--warmup"))
            a.warmup = atoi(v);
        else
            usage();
    }
    if (!role || !a.kase || !pattern || (fd < 0) == (lib == NULL) || a.chunk == 0 ||
        a.chunk > 65536 || a.reps < 1 || a.count < 1)
        usage();
    a.server = !strcmp(role, "server");
    bool stream = !strcmp(a.kase, "stream"), sel = !strcmp(a.kase, "pingsel");
    if (!stream && !sel && strcmp(a.kase, "ping"))
        usage();
    load_pattern(pattern);

    static int rawfd;
    if (lib) {
        O = load_lib(lib);
        if (domain < 0 || port < 0)
            usage();
        H = a.server ? (void *)lv_server_init(domain, port, a.ring, a.ring)
                     : (void *)lv_client_init(domain, port);
        if (!H) {
            printf("{\"ok\": false, \"error\": \"%s_init failed: %s\"}\n", role,
                   strerror(errno));
            return 1;
        }
    } else {
        O = raw_ops;
        rawfd = fd;
        H = &rawfd;
        if (use_epoll) {
            struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET};
            raw_epfd = epoll_create1(EPOLL_CLOEXEC);
            ev.data.fd = fd;
            if (raw_epfd < 0 || epoll_ctl(raw_epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
                perror("vbench: epoll");
                return 2;
            }
            O.wait = rawep_wait;
            O.fd = rawep_fd;
        }
    }

    struct rep *reps = calloc((size_t)a.reps, sizeof *reps);
    bool ok = true;
    if (stream && a.warmup > 0) { /* --warmup is in bytes for a stream: one untimed rep */
        struct args w = a;
        struct rep dummy = {0};
        w.total = (size_t)a.warmup;
        ok = stream_rep(&w, &dummy);
    } else if (!stream) {
        bool wok = true;
        for (int i = 0; ok && i < a.warmup; i++)
            ok = ping_one(&a, sel, NULL, &wok);
        for (int r = 0; r < a.reps; r++)
            if (!a.server)
                reps[r].rtt = calloc((size_t)a.count, sizeof(int64_t));
    }
    int done = 0;
    for (; ok && done < a.reps; done++)
        ok = stream ? stream_rep(&a, &reps[done]) : ping_rep(&a, sel, &reps[done]);
    if (!ok)
        done--;

    printf("{\"ok\": %s, \"role\": \"%s\", \"reps\": [", ok ? "true" : "false", role);
    for (int r = 0; r < done; r++) {
        printf("%s{\"t0\": %lld, \"t1\": %lld, \"cpu\": %.6f, \"verified\": %s", r ? ", " : "",
               (long long)reps[r].t0, (long long)reps[r].t1, reps[r].cpu,
               reps[r].verified ? "true" : "false");
        if (reps[r].rtt) {
            printf(", \"rtt_ns\": [");
            for (int i = 0; i < a.count; i++)
                printf("%s%lld", i ? "," : "", (long long)reps[r].rtt[i]);
            printf("]");
        }
        printf("}");
    }
    printf("]");
    if (errmsg) {
        printf(", \"error\": \"");
        for (const char *p = errmsg; *p; p++)
            putchar(*p == '"' || *p == '\\' ? '\'' : *p);
        printf("\"");
    }
    printf("}\n");
    fflush(stdout);
    O.close(H);
    return ok ? 0 : 1;
}
