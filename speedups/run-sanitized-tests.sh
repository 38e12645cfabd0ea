#!/bin/sh
# Run the conformance and reliability suites over the compiled engine, and the extension's
# own tests (tests/test_speedups.py), against an ASan+UBSan build of vchan._speedups: the C
# library's sources and the extension's, instrumented, as libvchan-socket's
# run-sanitized-tests.sh does for the shared library.
#
#   speedups/run-sanitized-tests.sh [pytest args...]
#
# The build goes to build/asan-speedups/ (setup.py build_ext with sanitizer flags); the
# suite loads it as vchan._speedups through VCHAN_TEST_SPEEDUPS (tests/_speedups.py), in the
# test process and in the peer processes it starts. The Python interpreter itself is not
# instrumented, so the sanitizer runtimes are preloaded.
# PYTHON selects the interpreter (default python3; the root Makefile passes its venv's, which
# has setuptools). Exit status is pytest's; a sanitizer report aborts the test process.
# SPDX-License-Identifier: MIT
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
PYTHON=${PYTHON:-python3}
CC=${CC:-gcc}
out="$repo/build/asan-speedups"
SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all"

cd "$repo"
# -O1 -g after Python's own flags (which come first); a larger pusher stack, as the
# library's sanitizer build has (ASan's redzones grow every frame).
CC="$CC" CFLAGS="-O1 -g $SAN -DVCHAN__PUSHER_STACK='(1024 * 1024)'" LDFLAGS="$SAN" \
	"$PYTHON" setup.py -q build_ext --force --build-lib "$out" --build-temp "$out/tmp" \
	>/dev/null
so=$(ls "$out"/vchan/_speedups*.so)
if ! readelf -d "$so" | grep -q libasan; then
	echo "$so: not linked with the sanitizer runtime (no compiler: the build was skipped?)" >&2
	exit 1
fi

VCHAN_TEST_SPEEDUPS="$so"
VCHAN_TEST_IMPLS=speedups
LD_PRELOAD="$($CC -print-file-name=libasan.so) $($CC -print-file-name=libubsan.so)"
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export VCHAN_TEST_SPEEDUPS VCHAN_TEST_IMPLS LD_PRELOAD ASAN_OPTIONS UBSAN_OPTIONS
exec "$PYTHON" -m pytest tests/conformance tests/reliability tests/test_speedups.py "$@"
