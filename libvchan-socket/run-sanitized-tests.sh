#!/bin/sh
# Run the shared conformance and reliability suites against the ASan+UBSan build of
# libvchan-socket.
#
#   libvchan-socket/run-sanitized-tests.sh [pytest args...]
#
# PYTHON selects the interpreter (default python3; the root Makefile passes its venv's).
# Exit status is pytest's; a sanitizer report aborts the test process (non-zero).
# SPDX-License-Identifier: MIT
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
PYTHON=${PYTHON:-python3}
CC=${CC:-gcc}

make -C "$here" sanitize >/dev/null

cd "$repo"
VCHAN_TEST_LIB="$here/build-asan/libvchan-socket.so"
VCHAN_TEST_IMPLS=lib
LD_PRELOAD="$($CC -print-file-name=libasan.so) $($CC -print-file-name=libubsan.so)"
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export VCHAN_TEST_LIB VCHAN_TEST_IMPLS LD_PRELOAD ASAN_OPTIONS UBSAN_OPTIONS
exec "$PYTHON" -m pytest tests/conformance tests/reliability "$@"
