"""The conformance suite: SPEC.md §1-§7, written once against the libvchan C API surface.

Every test runs against each implementation selected by ``VCHAN_TEST_IMPLS`` (default
``python,c``; ``VCHAN_TEST_LIB=/path/libvchan.so`` adds ``lib``, any library with Qubes'
``libvchan.h`` API, e.g. the sanitizer build). Test names starting ``test_must_`` prove a MUST
of the SPEC (or a row of its §4 table); ``VCHAN_TEST_TIMEOUT`` scales the deadlines.

    pytest tests/conformance -q
    VCHAN_TEST_IMPLS=c pytest tests/conformance -q
    LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)" \\
        ASAN_OPTIONS=detect_leaks=0 VCHAN_TEST_IMPLS=lib \\
        VCHAN_TEST_LIB=$PWD/libvchan-socket/build-asan/libvchan-socket.so pytest tests/conformance
"""
