/*
 * _speedups.c - vchan._speedups, the compiled engine: libvchan-socket's own sources
 * (util.c init.c io.c notify.c pusher.c, built into this extension with hidden visibility)
 * behind a CPython type with the surface of the pure-Python engine, vchan._core.Channel.
 *
 * SPDX-License-Identifier: MIT
 * Copyright (c) 2026 The vchan developers
 *
 * One algorithm: every method is one call of the C library (docs/DESIGN.md); this file only
 * converts arguments and errors. What it adds:
 *
 *  - The GIL. Every call that makes system calls runs without it, as a socket's do (a
 *    non-blocking one too: holding it would starve the program's other threads, who get
 *    the GIL only every switch interval then). close() keeps it: it never waits, and it
 *    takes the handle away from the calls that start after it.
 *
 *  - Signals. The library retries EINTR inside its waits; a Python program must still
 *    run its signal handlers (Ctrl-C is KeyboardInterrupt) while a call sleeps. The
 *    library's internal hook (vchan__intr_hook, internal.h) is called when a wait that
 *    sleeps with no lock held is interrupted: ours takes the GIL back and runs the handlers
 *    (PyErr_CheckSignals). A handler that returns lets the wait go on, inside the same call,
 *    so nothing is restarted or repeated; one that raises ends the call with -1/EINTR (the
 *    library keeps what it consumed: a partial recv stays in its stash) and the method
 *    raises that exception. As with a socket's sendall(), a blocking write that raises
 *    may have sent part of its bytes.
 *
 *  - Lifetime. The object holds the library's handle until close(). Every call takes a
 *    reference on the handle (vchan__ref, with the GIL held, so never after close() took
 *    the handle away) for its whole length: close() from another thread wakes a blocked
 *    call, which returns EBADF, and the memory is freed by whoever drops the last
 *    reference, never while a call uses it. In a fork() child, close() only closes the
 *    child's copies of the descriptors (libvchan_close checks the pid).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <string.h>
#include <time.h>

#include "internal.h"

/* ------------------------------------------------------------------------- signals */

/* This thread's state while it is inside one of our calls without the GIL, else NULL. */
static _Thread_local PyThreadState *intr_ts;
/* A signal handler raised during that call: end every wait of it (errno EINTR). */
static _Thread_local int intr_raised;

/* The library's vchan__intr_hook: a wait of this thread was interrupted by a signal. */
static int intr_hook(void)
{
	PyThreadState *ts = intr_ts;
	int r;

	if (!ts)
		return 0; /* not a call of ours (the pusher thread) */
	if (intr_raised)
		return -1;
	intr_ts = NULL; /* a call a handler makes is a call of its own */
	PyEval_RestoreThread(ts);
	r = PyErr_CheckSignals(); /* runs the handlers in the main thread only, as Python does */
	intr_ts = PyEval_SaveThread();
	if (r < 0) {
		intr_raised = 1;
		return -1;
	}
	return 0;
}

struct nogil {
	PyThreadState *prev_ts;
	int prev_raised;
};

/* Release the GIL for a call that may sleep (like Py_BEGIN_ALLOW_THREADS). */
static inline void nogil_begin(struct nogil *g)
{
	g->prev_ts = intr_ts;
	g->prev_raised = intr_raised;
	intr_raised = 0;
	intr_ts = PyEval_SaveThread();
}

/* Take the GIL back; returns whether a signal handler raised meanwhile (exception set). */
static inline int nogil_end(struct nogil *g)
{
	PyThreadState *ts = intr_ts;
	int raised = intr_raised;

	intr_ts = g->prev_ts;
	intr_raised = g->prev_raised;
	PyEval_RestoreThread(ts);
	return raised;
}

/* -------------------------------------------------------------------------- errors */

/* OSError(code, message): the errno picks the subclass, as OSError() itself does. */
static PyObject *raise_os(int code, const char *message)
{
	PyObject *exc = PyObject_CallFunction(PyExc_OSError, "is", code,
					      message ? message : strerror(code));

	if (exc) {
		PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
		Py_DECREF(exc);
	}
	return NULL;
}

static PyObject *raise_os_obj(int code, PyObject *message)
{
	PyObject *exc;

	if (!message)
		return NULL;
	exc = PyObject_CallFunction(PyExc_OSError, "iO", code, message);
	Py_DECREF(message);
	if (exc) {
		PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
		Py_DECREF(exc);
	}
	return NULL;
}

static PyObject *raise_closed(void)
{
	return raise_os(EBADF, "vchan is closed");
}

enum op { OP_READ, OP_RECV, OP_WRITE, OP_SEND };
static const char *const op_name[] = { "read", "recv", "write", "send" };

/* A failed call's errno as the pure-Python engine reports it. */
static PyObject *raise_call(int code, enum op op, Py_ssize_t size)
{
	switch (code) {
	case EBADF:
		return raise_closed();
	case EPIPE:
	case ECONNRESET:
		return raise_os(EPIPE, "vchan peer disconnected");
	case EMSGSIZE:
		return raise_os_obj(EMSGSIZE, PyUnicode_FromFormat(
			"%s of %zd bytes exceeds the %s ring", op_name[op], size,
			op == OP_RECV ? "read" : "write"));
	default:
		return raise_os(code ? code : EIO, NULL);
	}
}

/* A failed init's errno, naming the path where it helps. */
static PyObject *raise_init(int code, PyObject *path)
{
	switch (code) {
	case EEXIST:
		return raise_os_obj(code, PyUnicode_FromFormat(
			"a symlink or non-socket file is in the way at %U; not touching it", path));
	case EADDRINUSE:
		return raise_os_obj(code, PyUnicode_FromFormat(
			"a vchan server is already listening at %U", path));
	case EACCES:
		return raise_os(code, "vchan server runs as an untrusted uid");
	case ENOENT:
	case ENOTDIR:
		return raise_os_obj(code, PyUnicode_FromFormat(
			"%s: the socket directory of %U", strerror(code), path));
	default:
		return raise_os(code ? code : EIO, NULL);
	}
}

/* ------------------------------------------------------------------------- buffers */

/* A contiguous buffer of bytes; writable for reads (TypeError otherwise, as a socket's). */
static int get_buffer(PyObject *obj, Py_buffer *view, bool writable, const char *fn)
{
	if (PyObject_GetBuffer(obj, view, PyBUF_STRIDES | (writable ? PyBUF_WRITABLE : 0)) < 0) {
		if (!writable || !PyObject_CheckBuffer(obj))
			return -1;
		PyErr_Format(PyExc_TypeError,
			     "%s() needs a writable buffer, not a read-only %.100s", fn,
			     Py_TYPE(obj)->tp_name);
		return -1;
	}
	if (!PyBuffer_IsContiguous(view, 'C')) {
		PyBuffer_Release(view);
		PyErr_Format(PyExc_TypeError, "%s() needs a contiguous buffer, not a strided %.100s",
			     fn, Py_TYPE(obj)->tp_name);
		return -1;
	}
	return 0;
}

/* ------------------------------------------------------------------------- the type */

typedef struct {
	PyObject_HEAD
	libvchan_t *h;          /* NULL once closed */
	PyObject *path;         /* str: the socket's path */
	Py_ssize_t read_ring;
	Py_ssize_t write_ring;
	int closed_state;       /* the state when close() was called */
	char is_server;
	char blocking;          /* set_blocking(), for the blocking property */
	PyObject *weakrefs;
} Chan;

static PyTypeObject ChanType;

/* Wrap a fresh handle (the object owns it from here, even on failure). */
static PyObject *chan_new(PyTypeObject *cls, libvchan_t *h, PyObject *path)
{
	Chan *self = (Chan *)cls->tp_alloc(cls, 0);

	if (!self) {
		libvchan_close(h);
		return NULL;
	}
	self->h = h;
	Py_INCREF(path);
	self->path = path;
	self->read_ring = (Py_ssize_t)h->read_ring;
	self->write_ring = (Py_ssize_t)h->write_ring;
	self->is_server = h->is_server;
	self->blocking = 1;
	return (PyObject *)self;
}

static void chan_dealloc(Chan *self)
{
	libvchan_t *h = self->h;

	if (self->weakrefs)
		PyObject_ClearWeakRefs((PyObject *)self);
	self->h = NULL;
	if (h)
		libvchan_close(h); /* like a file's: a channel nobody can reach is closed */
	Py_CLEAR(self->path);
	Py_TYPE(self)->tp_free((PyObject *)self);
}

/* ------------------------------------------------------------------------ data path */

static int do_op(enum op op, libvchan_t *h, void *buf, size_t size)
{
	switch (op) {
	case OP_READ:
		return libvchan_read(h, buf, size);
	case OP_RECV:
		return libvchan_recv(h, buf, size);
	case OP_WRITE:
		return libvchan_write(h, buf, size);
	default:
		return libvchan_send(h, buf, size);
	}
}

static PyObject *data_call(Chan *self, PyObject *const *args, Py_ssize_t nargs, enum op op)
{
	const char *fn = op_name[op];
	libvchan_t *h = self->h;
	Py_buffer view;
	Py_ssize_t size;
	struct nogil g;
	int r, err, raised;

	if (nargs != 2) {
		PyErr_Format(PyExc_TypeError, "%s() takes 2 arguments (%zd given)", fn, nargs);
		return NULL;
	}
	if (!h)
		return raise_closed();
	size = PyLong_AsSsize_t(args[1]);
	if (size == -1 && PyErr_Occurred())
		return NULL;
	if (get_buffer(args[0], &view, op == OP_READ || op == OP_RECV, fn) < 0)
		return NULL;
	if (size < 0 || size > view.len) {
		Py_ssize_t len = view.len;

		PyBuffer_Release(&view);
		PyErr_Format(PyExc_ValueError, "%s(): size %zd is not within the buffer's %zd bytes",
			     fn, size, len);
		return NULL;
	}
	if (size == 0) {
		PyBuffer_Release(&view);
		return PyLong_FromLong(0);
	}
	vchan__ref(h);
	nogil_begin(&g);
	r = do_op(op, h, view.buf, (size_t)size);
	err = errno;
	raised = nogil_end(&g);
	vchan__unref(h);
	PyBuffer_Release(&view);
	if (raised)
		return NULL; /* a signal handler raised: the call ended with -1/EINTR */
	if (r < 0)
		return raise_call(err, op, size);
	return PyLong_FromLong(r);
}

static PyObject *chan_read(Chan *self, PyObject *const *args, Py_ssize_t nargs)
{
	return data_call(self, args, nargs, OP_READ);
}

static PyObject *chan_recv(Chan *self, PyObject *const *args, Py_ssize_t nargs)
{
	return data_call(self, args, nargs, OP_RECV);
}

static PyObject *chan_write(Chan *self, PyObject *const *args, Py_ssize_t nargs)
{
	return data_call(self, args, nargs, OP_WRITE);
}

static PyObject *chan_send(Chan *self, PyObject *const *args, Py_ssize_t nargs)
{
	return data_call(self, args, nargs, OP_SEND);
}

/* ------------------------------------------------------------- the Pythonic surface */

/*
 * api_readinto, api_recv, api_write, api_send, api_wait, api_data_ready: the methods of
 * vchan.Vchan itself (channel.py), for a Vchan over this engine to bind in place of its
 * own (Vchan.__init__). Same results and exceptions; what goes is the Python frame around
 * every call, the largest cost a plain socket does not pay (bench/README.md). Errors are
 * rare, so they take the Python route: the OSError the engine method would raise, given
 * to vchan.exceptions.from_oserror.
 */

static PyObject *from_oserror; /* vchan.exceptions.from_oserror, imported on first use */

/* The pending OSError as the Pythonic API raises it ("raise from_oserror(e) from None").
 * Sets *eof (when given) instead if that is a ConnectionError: readinto's end of stream. */
static PyObject *api_error(int *eof)
{
	PyObject *type, *value, *tb, *exc;

	PyErr_Fetch(&type, &value, &tb);
	PyErr_NormalizeException(&type, &value, &tb);
	if (!value || !PyObject_TypeCheck(value, (PyTypeObject *)PyExc_OSError)) {
		PyErr_Restore(type, value, tb);
		return NULL;
	}
	Py_XDECREF(type);
	Py_XDECREF(tb);
	if (!from_oserror) {
		PyObject *mod = PyImport_ImportModule("vchan.exceptions");

		if (mod) {
			from_oserror = PyObject_GetAttrString(mod, "from_oserror");
			Py_DECREF(mod);
		}
		if (!from_oserror) {
			Py_DECREF(value);
			return NULL;
		}
	}
	exc = PyObject_CallOneArg(from_oserror, value);
	Py_DECREF(value);
	if (!exc)
		return NULL;
	if (eof && PyObject_TypeCheck(exc, (PyTypeObject *)PyExc_ConnectionError)) {
		Py_DECREF(exc);
		*eof = 1;
		return NULL;
	}
	PyException_SetCause(exc, NULL); /* "from None": also suppresses the context */
	PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
	Py_DECREF(exc);
	return NULL;
}

/* The Pythonic API's error for a channel closed before the call (as _closed()). */
static PyObject *api_closed(void)
{
	PyErr_SetString(PyExc_ValueError, "I/O operation on closed vchan");
	return NULL;
}

/* One data call on a buffer already taken: the count, or -1 with an exception set. */
static int api_data(Chan *self, enum op op, void *buf, Py_ssize_t size)
{
	libvchan_t *h = self->h;
	struct nogil g;
	int r, err, raised;

	if (!h) {
		api_closed();
		return -1;
	}
	vchan__ref(h);
	nogil_begin(&g);
	r = do_op(op, h, buf, (size_t)size);
	err = errno;
	raised = nogil_end(&g);
	vchan__unref(h);
	if (raised)
		return -1; /* a signal handler's exception, as it is */
	if (r < 0) {
		raise_call(err, op, size);
		return -1;
	}
	return r;
}

static PyObject *chan_api_readinto(Chan *self, PyObject *arg)
{
	Py_buffer view;
	int n, eof = 0;

	if (get_buffer(arg, &view, true, "readinto") < 0)
		return NULL;
	n = view.len ? api_data(self, OP_READ, view.buf, view.len) : 0;
	if (n == 0 && view.len) {
		PyBuffer_Release(&view);
		PyErr_SetString(PyExc_BlockingIOError, "no data ready on the vchan");
		return NULL;
	}
	PyBuffer_Release(&view);
	if (n < 0) {
		if (PyErr_ExceptionMatches(PyExc_OSError) && !api_error(&eof) && eof)
			return PyLong_FromLong(0); /* the peer is gone and nothing is left */
		return NULL;
	}
	return PyLong_FromLong(n);
}

static PyObject *chan_api_recv(Chan *self, PyObject *arg)
{
	Py_ssize_t size = PyNumber_AsSsize_t(arg, PyExc_OverflowError);
	PyObject *out;
	int n;

	if (size == -1 && PyErr_Occurred())
		return NULL;
	if (size < 0) {
		PyErr_SetString(PyExc_ValueError, "recv size must not be negative");
		return NULL;
	}
	out = PyBytes_FromStringAndSize(NULL, size);
	if (!out || size == 0)
		return out;
	n = api_data(self, OP_RECV, PyBytes_AS_STRING(out), size);
	if (n <= 0) {
		Py_DECREF(out);
		if (n == 0)
			PyErr_Format(PyExc_BlockingIOError,
				     "fewer than %zd bytes ready on the vchan", size);
		else if (PyErr_ExceptionMatches(PyExc_OSError))
			api_error(NULL);
		return NULL;
	}
	return out;
}

/* api_write and api_send: the count (write) or None (send). */
static PyObject *api_put(Chan *self, PyObject *arg, enum op op)
{
	Py_buffer view;
	int n;

	if (get_buffer(arg, &view, false, op_name[op]) < 0)
		return NULL;
	n = view.len ? api_data(self, op, view.buf, view.len) : 0;
	if (n == 0 && view.len) {
		PyBuffer_Release(&view);
		PyErr_SetString(PyExc_BlockingIOError, op == OP_SEND
				? "not enough buffer space on the vchan"
				: "no buffer space on the vchan");
		return NULL;
	}
	PyBuffer_Release(&view);
	if (n < 0) {
		if (PyErr_ExceptionMatches(PyExc_OSError))
			api_error(NULL);
		return NULL;
	}
	if (op == OP_SEND)
		Py_RETURN_NONE;
	return PyLong_FromLong(n);
}

static PyObject *chan_api_write(Chan *self, PyObject *arg)
{
	return api_put(self, arg, OP_WRITE);
}

static PyObject *chan_api_send(Chan *self, PyObject *arg)
{
	return api_put(self, arg, OP_SEND);
}

/* -------------------------------------------------------------- state, notification */

static PyObject *chan_wait(Chan *self, PyObject *Py_UNUSED(ignored))
{
	libvchan_t *h = self->h;
	struct nogil g;
	int r, err, raised;

	if (!h)
		return raise_closed();
	vchan__ref(h);
	nogil_begin(&g);
	r = libvchan_wait(h);
	err = errno;
	raised = nogil_end(&g);
	vchan__unref(h);
	if (raised)
		return NULL;
	if (r < 0)
		return raise_call(err, OP_READ, 0);
	return PyLong_FromLong(0);
}

/* is_open, data_ready, buffer_space: one int-returning library call without the GIL. */
static PyObject *int_call(Chan *self, int (*fn)(libvchan_t *))
{
	libvchan_t *h = self->h;
	struct nogil g;
	int n;

	if (!h)
		return raise_closed();
	vchan__ref(h);
	nogil_begin(&g);
	n = fn(h);
	nogil_end(&g);
	vchan__unref(h);
	return PyLong_FromLong(n);
}

static PyObject *chan_is_open(Chan *self, PyObject *Py_UNUSED(ignored))
{
	return int_call(self, libvchan_is_open);
}

static PyObject *chan_data_ready(Chan *self, PyObject *Py_UNUSED(ignored))
{
	return int_call(self, libvchan_data_ready);
}

static PyObject *chan_buffer_space(Chan *self, PyObject *Py_UNUSED(ignored))
{
	return int_call(self, libvchan_buffer_space);
}

static PyObject *chan_api_wait(Chan *self, PyObject *Py_UNUSED(ignored))
{
	PyObject *r;

	if (!self->h)
		return api_closed();
	r = chan_wait(self, NULL);
	if (!r) {
		if (PyErr_ExceptionMatches(PyExc_OSError))
			api_error(NULL);
		return NULL;
	}
	Py_DECREF(r);
	Py_RETURN_NONE;
}

static PyObject *chan_api_data_ready(Chan *self, PyObject *Py_UNUSED(ignored))
{
	PyObject *r;

	if (!self->h)
		return api_closed();
	r = int_call(self, libvchan_data_ready);
	if (!r && PyErr_ExceptionMatches(PyExc_OSError))
		api_error(NULL);
	return r;
}

static PyObject *chan_set_blocking(Chan *self, PyObject *arg)
{
	int flag;

	if (!self->h)
		return raise_closed();
	flag = PyObject_IsTrue(arg);
	if (flag < 0)
		return NULL;
	libvchan_set_blocking(self->h, flag != 0);
	self->blocking = (char)(flag != 0);
	Py_RETURN_NONE;
}

static PyObject *chan_fileno(Chan *self, PyObject *Py_UNUSED(ignored))
{
	if (!self->h)
		return raise_closed();
	return PyLong_FromLong(libvchan_fd_for_select(self->h));
}

static PyObject *chan_close(Chan *self, PyObject *Py_UNUSED(ignored))
{
	libvchan_t *h = self->h;

	if (h) {
		self->closed_state = vchan__load(&h->state);
		self->h = NULL; /* no call starts from here (the GIL is held) */
		libvchan_close(h);
	}
	Py_RETURN_NONE;
}

/* ---------------------------------------------------------------- client connection */

static double monotonic(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* finish(blocking, timeout=None): 0 connected, 1 not yet (non-blocking); else raises. */
static PyObject *finish(Chan *self, int blocking, PyObject *timeout)
{
	libvchan_t *h = self->h;
	double deadline = 0, left;
	int r, err, raised = 0;

	if (!h)
		return raise_closed();
	if (timeout != Py_None) {
		left = PyFloat_AsDouble(timeout);
		if (left == -1 && PyErr_Occurred())
			return NULL;
		if (left != left) {
			PyErr_SetString(PyExc_ValueError, "timeout must not be NaN");
			return NULL;
		}
		deadline = monotonic() + left;
	}
	vchan__ref(h);
	for (;;) {
		if (blocking && timeout == Py_None) {
			struct nogil g;

			nogil_begin(&g);
			r = libvchan_client_init_async_finish(h, true);
			err = errno;
			raised = nogil_end(&g);
			break;
		}
		{
			struct nogil g;

			nogil_begin(&g);
			r = libvchan_client_init_async_finish(h, false); /* never sleeps */
			err = errno;
			nogil_end(&g);
		}
		if (r != 1 || !blocking)
			break;
		/* wait for the watch fd with the time left (as the pure engine does) */
		left = deadline - monotonic();
		if (left <= 0) {
			r = -1;
			err = ETIMEDOUT;
			break;
		}
		{
			struct pollfd p = { .fd = libvchan_fd_for_select(h), .events = POLLIN };
			double ms = left * 1000 + 0.999;

			Py_BEGIN_ALLOW_THREADS
			r = poll(&p, 1, ms < INT_MAX ? (int)ms : INT_MAX); /* (NaN: INT_MAX) */
			err = errno;
			Py_END_ALLOW_THREADS
		}
		if (r < 0 && err == EINTR) {
			if (PyErr_CheckSignals() < 0) {
				raised = 1;
				break;
			}
		} else if (r < 0) {
			break;
		}
	}
	vchan__unref(h);
	if (raised)
		return NULL;
	if (r < 0) {
		if (err == ETIMEDOUT)
			return raise_os(err, "timed out waiting for the vchan server");
		if (err == EBADF)
			return raise_closed();
		return raise_init(err, self->path);
	}
	return PyLong_FromLong(r);
}

static PyObject *chan_finish(Chan *self, PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = { "blocking", "timeout", NULL };
	PyObject *timeout = Py_None;
	int blocking;

	if (!PyArg_ParseTupleAndKeywords(args, kwds, "p|O:finish", kwlist, &blocking, &timeout))
		return NULL;
	return finish(self, blocking, timeout);
}

/* --------------------------------------------------------------------- constructors */

/* vchan._config.NAME(*args): the pure engine's checks and messages (EINVAL, path). */
static PyObject *config_call(const char *name, PyObject *args)
{
	PyObject *mod, *fn, *ret = NULL;

	if (!args)
		return NULL;
	mod = PyImport_ImportModule("vchan._config");
	if (mod) {
		fn = PyObject_GetAttrString(mod, name);
		if (fn) {
			ret = PyObject_CallObject(fn, args);
			Py_DECREF(fn);
		}
		Py_DECREF(mod);
	}
	Py_DECREF(args);
	return ret;
}

/* An int argument the pure engine's checks accepted (so it fits). */
static int int_arg(PyObject *v)
{
	long x = PyLong_AsLong(v);

	if (x == -1 && PyErr_Occurred())
		return -1;
	if (x < INT_MIN || x > INT_MAX) {
		PyErr_SetString(PyExc_OverflowError, "value out of range for a C int");
		return -1;
	}
	return (int)x;
}

/* allow_any_uid=: None (from the environment, -1), else true or false. */
static int allow_arg(PyObject *allow)
{
	int v;

	if (allow == Py_None)
		return -1;
	v = PyObject_IsTrue(allow);
	return v < 0 ? -2 : v;
}

static PyObject *chan_server(PyTypeObject *cls, PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = { "domain", "port", "read_min", "write_min", "allow_any_uid", NULL };
	PyObject *domain, *port, *read_min, *write_min, *allow = Py_None, *path, *ret;
	int d, p, any, err;
	Py_ssize_t rmin, wmin;
	libvchan_t *h;
	struct nogil g;

	if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOO|O:server", kwlist, &domain, &port,
					 &read_min, &write_min, &allow))
		return NULL;
	path = config_call("server_path", PyTuple_Pack(4, domain, port, read_min, write_min));
	if (!path)
		return NULL;
	any = allow_arg(allow);
	/* checked by server_path: ints in range */
	d = int_arg(domain);
	p = int_arg(port);
	rmin = PyLong_AsSsize_t(read_min);
	wmin = PyLong_AsSsize_t(write_min);
	if (any == -2 || PyErr_Occurred()) {
		Py_DECREF(path);
		return NULL;
	}
	nogil_begin(&g);
	h = vchan__server_init(d, p, (size_t)rmin, (size_t)wmin, any);
	err = errno;
	nogil_end(&g);
	ret = h ? chan_new(cls, h, path) : raise_init(err, path);
	Py_DECREF(path);
	return ret;
}

/* watch: a connection made at once is an event for the next wait() (async init, SPEC 2). */
static PyObject *client_start(PyTypeObject *cls, PyObject *domain, PyObject *port,
			      PyObject *allow, int watch)
{
	PyObject *path, *ret;
	int d, p, any, err;
	EVTCHN fd;
	libvchan_t *h;
	struct nogil g;

	path = config_call("client_path", PyTuple_Pack(2, domain, port));
	if (!path)
		return NULL;
	any = allow_arg(allow);
	d = int_arg(domain);
	p = int_arg(port);
	if (any == -2 || PyErr_Occurred()) {
		Py_DECREF(path);
		return NULL;
	}
	nogil_begin(&g);
	h = vchan__client_start(d, p, &fd, watch != 0, any);
	err = errno;
	nogil_end(&g);
	ret = h ? chan_new(cls, h, path) : raise_init(err, path);
	Py_DECREF(path);
	return ret;
}

static PyObject *chan_client_start(PyTypeObject *cls, PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = { "domain", "port", "allow_any_uid", "watch", NULL };
	PyObject *domain, *port, *allow = Py_None;
	int watch = 1;

	if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|Op:client_start", kwlist, &domain, &port,
					 &allow, &watch))
		return NULL;
	return client_start(cls, domain, port, allow, watch);
}

static PyObject *chan_client(PyTypeObject *cls, PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = { "domain", "port", "timeout", "allow_any_uid", NULL };
	PyObject *domain, *port, *timeout = Py_None, *allow = Py_None, *ch, *r;

	if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|OO:client", kwlist, &domain, &port,
					 &timeout, &allow))
		return NULL;
	ch = client_start(cls, domain, port, allow, 0); /* blocking: nobody polls a watch fd */
	if (!ch)
		return NULL;
	r = finish((Chan *)ch, 1, timeout);
	if (!r) {
		PyObject *type, *value, *tb;

		PyErr_Fetch(&type, &value, &tb);
		Py_XDECREF(chan_close((Chan *)ch, NULL));
		PyErr_Restore(type, value, tb);
		Py_DECREF(ch);
		return NULL;
	}
	Py_DECREF(r);
	return ch;
}

/* ----------------------------------------------------------------------- attributes */

static PyObject *chan_get_blocking(Chan *self, void *Py_UNUSED(closure))
{
	return PyBool_FromLong(self->blocking);
}

static PyObject *chan_get_closed(Chan *self, void *Py_UNUSED(closure))
{
	return PyBool_FromLong(self->h == NULL);
}

static PyObject *chan_get_state(Chan *self, void *Py_UNUSED(closure))
{
	return PyLong_FromLong(self->h ? vchan__load(&self->h->state) : self->closed_state);
}

static PyObject *chan_get_is_server(Chan *self, void *Py_UNUSED(closure))
{
	return PyBool_FromLong(self->is_server);
}

static PyObject *chan_repr(Chan *self)
{
	if (!self->h)
		return PyUnicode_FromFormat("<%s closed>", Py_TYPE(self)->tp_name);
	return PyUnicode_FromFormat("<%s fd=%d state=%d %U>", Py_TYPE(self)->tp_name,
				    libvchan_fd_for_select(self->h),
				    vchan__load(&self->h->state), self->path);
}

static PyMethodDef chan_methods[] = {
	{ "server", (PyCFunction)(void (*)(void))chan_server,
	  METH_VARARGS | METH_KEYWORDS | METH_CLASS,
	  "server(domain, port, read_min, write_min, allow_any_uid=None)\n--\n\n"
	  "Listen for the client in domain on port; returns at once, WAITING." },
	{ "client_start", (PyCFunction)(void (*)(void))chan_client_start,
	  METH_VARARGS | METH_KEYWORDS | METH_CLASS,
	  "client_start(domain, port, allow_any_uid=None, watch=True)\n--\n\n"
	  "Begin an asynchronous connection; finish() completes it. watch: a connection\n"
	  "made at once makes the watch fd readable (an event for the next wait())." },
	{ "client", (PyCFunction)(void (*)(void))chan_client,
	  METH_VARARGS | METH_KEYWORDS | METH_CLASS,
	  "client(domain, port, timeout=None, allow_any_uid=None)\n--\n\n"
	  "Connect, waiting for the server (ETIMEDOUT after timeout seconds)." },
	{ "finish", (PyCFunction)(void (*)(void))chan_finish, METH_VARARGS | METH_KEYWORDS,
	  "finish(blocking, timeout=None)\n--\n\n"
	  "Drive an asynchronous client connection: 0 connected, 1 not yet." },
	{ "read", (PyCFunction)(void (*)(void))chan_read, METH_FASTCALL,
	  "read(buf, size)\n--\n\nlibvchan_read into a writable buffer: the count, 0 if "
	  "nothing now (non-blocking); EPIPE once the peer is gone and nothing is left." },
	{ "recv", (PyCFunction)(void (*)(void))chan_recv, METH_FASTCALL,
	  "recv(buf, size)\n--\n\nlibvchan_recv: exactly size bytes, or 0 (non-blocking)." },
	{ "write", (PyCFunction)(void (*)(void))chan_write, METH_FASTCALL,
	  "write(data, size)\n--\n\nlibvchan_write from any contiguous buffer: the count." },
	{ "send", (PyCFunction)(void (*)(void))chan_send, METH_FASTCALL,
	  "send(data, size)\n--\n\nlibvchan_send: all size bytes, or 0 (non-blocking)." },
	{ "wait", (PyCFunction)chan_wait, METH_NOARGS,
	  "wait()\n--\n\nBlock until the select fd is readable and clear it; returns 0." },
	{ "is_open", (PyCFunction)chan_is_open, METH_NOARGS,
	  "is_open()\n--\n\nThe state: 0 DISCONNECTED, 1 CONNECTED, 2 WAITING." },
	{ "data_ready", (PyCFunction)chan_data_ready, METH_NOARGS,
	  "data_ready()\n--\n\nBytes readable now without blocking." },
	{ "buffer_space", (PyCFunction)chan_buffer_space, METH_NOARGS,
	  "buffer_space()\n--\n\nBytes writable now without blocking (asks for the "
	  "consumption event)." },
	{ "set_blocking", (PyCFunction)chan_set_blocking, METH_O,
	  "set_blocking(flag)\n--\n\nBlocking (the default) or non-blocking mode." },
	{ "fileno", (PyCFunction)chan_fileno, METH_NOARGS,
	  "fileno()\n--\n\nThe select fd (libvchan_fd_for_select)." },
	{ "close", (PyCFunction)chan_close, METH_NOARGS,
	  "close()\n--\n\nClose the channel; calls blocked in other threads raise EBADF." },
	{ "api_readinto", (PyCFunction)chan_api_readinto, METH_O,
	  "api_readinto(buf)\n--\n\nVchan.readinto (the Pythonic API's own method)." },
	{ "api_recv", (PyCFunction)chan_api_recv, METH_O,
	  "api_recv(size)\n--\n\nVchan.recv: exactly size bytes, as bytes." },
	{ "api_write", (PyCFunction)chan_api_write, METH_O, "api_write(data)\n--\n\nVchan.write." },
	{ "api_send", (PyCFunction)chan_api_send, METH_O, "api_send(data)\n--\n\nVchan.send." },
	{ "api_wait", (PyCFunction)chan_api_wait, METH_NOARGS, "api_wait()\n--\n\nVchan.wait." },
	{ "api_data_ready", (PyCFunction)chan_api_data_ready, METH_NOARGS,
	  "api_data_ready()\n--\n\nVchan.data_ready." },
	{ NULL, NULL, 0, NULL },
};

static PyMemberDef chan_members[] = {
	{ "read_ring", T_PYSSIZET, offsetof(Chan, read_ring), READONLY, "read ring size" },
	{ "write_ring", T_PYSSIZET, offsetof(Chan, write_ring), READONLY, "write ring size" },
	{ "path", T_OBJECT_EX, offsetof(Chan, path), READONLY, "the socket's path" },
	{ NULL, 0, 0, 0, NULL },
};

static PyGetSetDef chan_getset[] = {
	{ "blocking", (getter)chan_get_blocking, NULL, "blocking mode", NULL },
	{ "closed", (getter)chan_get_closed, NULL, "close() was called", NULL },
	{ "state", (getter)chan_get_state, NULL, "the state, as last known", NULL },
	{ "is_server", (getter)chan_get_is_server, NULL, "a server end", NULL },
	{ NULL, NULL, NULL, NULL, NULL },
};

static PyTypeObject ChanType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "vchan._speedups.Channel",
	.tp_basicsize = sizeof(Chan),
	.tp_dealloc = (destructor)chan_dealloc,
	.tp_repr = (reprfunc)chan_repr,
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = "One end of a vchan: libvchan-socket's channel behind the surface of "
		  "vchan._core.Channel.\n\nMethods raise OSError (with an errno) on failure.",
	.tp_weaklistoffset = offsetof(Chan, weakrefs),
	.tp_methods = chan_methods,
	.tp_members = chan_members,
	.tp_getset = chan_getset,
};

/* -------------------------------------------------------------------------- module */

static struct PyModuleDef speedups_module = {
	PyModuleDef_HEAD_INIT,
	.m_name = "vchan._speedups",
	.m_doc = "The compiled vchan engine: libvchan-socket's algorithm behind the pure "
		 "engine's Channel surface (see vchan._engine).",
	.m_size = -1,
};

PyMODINIT_FUNC PyInit__speedups(void)
{
	PyObject *m;

	if (PyType_Ready(&ChanType) < 0)
		return NULL;
	m = PyModule_Create(&speedups_module);
	if (!m)
		return NULL;
	Py_INCREF(&ChanType);
	if (PyModule_AddObject(m, "Channel", (PyObject *)&ChanType) < 0 ||
	    PyModule_AddIntConstant(m, "DISCONNECTED", VCHAN_DISCONNECTED) < 0 ||
	    PyModule_AddIntConstant(m, "CONNECTED", VCHAN_CONNECTED) < 0 ||
	    PyModule_AddIntConstant(m, "WAITING", VCHAN_WAITING) < 0) {
		Py_DECREF(&ChanType);
		Py_DECREF(m);
		return NULL;
	}
	vchan__intr_hook = intr_hook;
	return m;
}
