# vchan: `make demo` shows it working, `make test` proves it. See README.md.
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
PREFIX ?= /usr/local
export PREFIX

.PHONY: all lib demo test lint typecheck pytest test-sanitize coverage install bench soak \
	clean dist deb rpm test-packages docs

all: lib

lib:
	$(MAKE) -C libvchan-socket

# The editable install builds the compiled engine vchan._speedups in place (src/vchan);
# the test suite rebuilds it when its C sources change (tests/_speedups.py).
$(VENV)/.installed: pyproject.toml setup.py version
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	touch $@

demo:
	PYTHONPATH=src $(PYTHON) -m vchan demo

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests bench docs
	$(VENV)/bin/ruff format --check src tests bench docs

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

# The suite in two passes: everything but the tests marked `serial` on PYTEST_JOBS workers
# (pytest-xdist; the suite mostly waits on sockets and children, so twice the CPUs), then
# the `serial` ones (CPU shares, timings, leak counts, signal storms) alone, on a machine
# the first pass no longer loads. Both passes always run; the exit status is the first
# failure's. PYTEST_JOBS=0: the first pass in one process too. PYTEST_ARGS: more arguments.
PYTEST_JOBS ?= $(shell echo $$((2 * $$(nproc 2>/dev/null || echo 1))))
PYTEST_ARGS ?=
define two_passes
	status=0; \
	$(1) -q -n $(PYTEST_JOBS) -m "not serial" $(2) $(PYTEST_ARGS) || status=$$?; \
	$(1) -q -m serial $(3) $(PYTEST_ARGS) || status=$$?; \
	exit $$status
endef

# Python line coverage of src/vchan, measured across both passes (the second appends; their
# threads included; the processes the tests start, such as the vchan command, are not
# measured): a table per file, then the total. COV= runs without it.
COV ?= --cov=vchan --cov-report=
# The ASan build first: tests in several workers use it, and must not all build it at once.
pytest: $(VENV)/.installed lib
	$(MAKE) -C libvchan-socket sanitize
	$(call two_passes,$(VPY) -m pytest,$(COV),$(COV) $(if $(COV),--cov-append))
	@if [ -n '$(COV)' ]; then $(VPY) -m coverage report; \
		echo "Python line coverage: $$($(VPY) -m coverage report --format=total)%"; fi

# C line coverage (gcov): libvchan-socket built with --coverage into
# libvchan-socket/build-cov, the conformance suite run against it (VCHAN_TEST_IMPLS=lib),
# then the figures per source file. About 35 s. COV_TESTS="tests/conformance tests/reliability"
# adds the fault tests: two minutes more, and a few points.
COV_TESTS ?= tests/conformance
coverage: $(VENV)/.installed
	$(MAKE) -C libvchan-socket coverage coverage-reset
	VCHAN_TEST_IMPLS=lib VCHAN_TEST_LIB=$(abspath libvchan-socket/build-cov/libvchan-socket.so) \
		$(VPY) -m pytest -q -p no:cacheprovider $(COV_TESTS)
	@$(MAKE) -s -C libvchan-socket coverage-report

# The docs first: a broken reference, a warning or a missing page fails the run early, and
# tests/test_docs.py then checks the man page it built.
test: lint typecheck docs pytest test-sanitize coverage

# ASan+UBSan: the C library (over cffi), then the compiled engine (the same sources in the
# extension, and the extension's own code).
test-sanitize: $(VENV)/.installed
	$(MAKE) -C libvchan-socket sanitize
	$(call two_passes,PYTHON=$(abspath $(VPY)) ./libvchan-socket/run-sanitized-tests.sh)
	$(call two_passes,PYTHON=$(abspath $(VPY)) ./speedups/run-sanitized-tests.sh)

install:
	$(MAKE) -C libvchan-socket install

$(VENV)/.bench: $(VENV)/.installed
	$(VPY) -m pip install -q -e '.[test,bench]'
	touch $@

bench: $(VENV)/.bench lib
	$(VPY) -m bench $(BENCH_ARGS)

$(VENV)/.docs: $(VENV)/.installed
	$(VPY) -m pip install -q -e '.[test,docs]'
	touch $@

# The Sphinx site (build/docs/html) and the man page (build/docs/man/vchan.1), from docs/.
# -W: warnings are errors; -E: read every page again (autodoc output depends on src/, which
# Sphinx does not track), so a warning is never hidden by a cached page. About 10 s.
DOCS_OUT ?= build/docs
SPHINX = $(VPY) -m sphinx -E -W --keep-going -q -j auto
docs: $(VENV)/.docs
	$(SPHINX) -b html -d $(DOCS_OUT)/doctrees docs $(DOCS_OUT)/html
	$(SPHINX) -b man -d $(DOCS_OUT)/doctrees docs $(DOCS_OUT)/man

# Random verified transfers for as long as asked (not in CI): make soak SOAK_SECONDS=3600
SOAK_SECONDS ?= 600
soak: $(VENV)/.installed lib
	$(VPY) tests/soak.py --seconds $(SOAK_SECONDS)

# ---- packages. The release version lives in ./version (see README "Installing").
RELEASE := $(shell cat version)
# Outputs go here (git-ignored); the tests point it at a temporary directory.
PKGOUT ?= build-pkg
P := $(abspath $(PKGOUT))
RPM_NAME := qubes-libvchan-socket
# The tree as it is in the working copy: tracked files and new ones not ignored (so no
# .venv, build outputs or caches). A tracked file deleted locally is skipped with a warning.
source_tar = git ls-files -z --cached --others --exclude-standard \
	| tar --null -T - --ignore-failed-read --owner=0 --group=0 --sort=name -c -f - $(1)

$(VENV)/.dist: $(VENV)/.installed
	$(VPY) -m pip install -q -e '.[test,dist]'
	touch $@

# The sdist and the wheels, in $(DISTDIR). python -m build makes the wheel from the sdist,
# so a file missing from the sdist breaks the build. With a C compiler that wheel carries the
# compiled engine (a platform wheel, linux_<arch>), and auditwheel repair adds its
# manylinux-tagged twin; without one it is pure Python (py3-none-any) and there is no twin.
DISTDIR ?= dist
dist: $(VENV)/.dist
	rm -f $(DISTDIR)/vchan-*.tar.gz $(DISTDIR)/vchan-*.whl
	$(VPY) -m build --outdir $(DISTDIR) .
	for whl in $(DISTDIR)/vchan-*-linux_*.whl; do \
		[ ! -e "$$whl" ] || PATH="$(abspath $(VENV))/bin:$$PATH" \
			$(VENV)/bin/auditwheel repair -w $(DISTDIR) "$$whl" || exit 1; \
	done

# libvchan-socket1 and libvchan-socket-dev, in $(PKGOUT)/deb/, built in a copy of the tree
# (dpkg-buildpackage writes its results next to the source directory).
deb:
	rm -rf $(P)/deb
	mkdir -p $(P)/deb/libvchan-socket-$(RELEASE)
	$(call source_tar) | tar -x -C $(P)/deb/libvchan-socket-$(RELEASE)
	cd $(P)/deb/libvchan-socket-$(RELEASE) && dpkg-buildpackage -us -uc -b
	rm -rf $(P)/deb/libvchan-socket-$(RELEASE)

rpm_spec/%.spec: rpm_spec/%.spec.in version
	sed -e 's|@VERSION@|$(RELEASE)|g' $< > $@

# qubes-libvchan-socket and -devel (and the .src.rpm), in $(PKGOUT)/rpm/. On a machine
# whose rpm database does not know the build tools (Debian), RPMBUILD_FLAGS=--nodeps.
RPMBUILD_FLAGS ?= $(if $(wildcard /etc/debian_version),--nodeps)
rpm: rpm_spec/libvchan-socket.spec
	rm -rf $(P)/rpm
	mkdir -p $(P)/rpm/SOURCES
	$(call source_tar,--transform 's|^|$(RPM_NAME)-$(RELEASE)/|' -z) \
		> $(P)/rpm/SOURCES/$(RPM_NAME)-$(RELEASE).tar.gz
	rpmbuild --define '_topdir $(P)/rpm' $(RPMBUILD_FLAGS) -ba $<

# The packaging tests (tests/packaging, not part of `make test`): build the Python, Debian
# and RPM packages, install and use them. Installs the tools it needs with apt-get (root).
# A test that installed the .debs and was killed before purging them (its deadline ends the
# whole run) leaves DEB_MARK behind: they are purged here, pass or fail.
DEB_MARK := $(P)/debs-installed-by-tests
test-packages: $(VENV)/.dist
	./.ci/packaging-tools
	mkdir -p $(P)
	VCHAN_TEST_PACKAGES=1 VCHAN_TEST_DEB_MARK=$(DEB_MARK) $(VPY) -m pytest -q tests/packaging; \
	status=$$?; \
	if [ -e $(DEB_MARK) ]; then dpkg --purge libvchan-socket-default-dev libvchan-socket-dev libvchan-socket1; \
		rm -f $(DEB_MARK); fi; \
	exit $$status

clean:
	-$(MAKE) -C libvchan-socket clean
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache dist build-pkg build rpm_spec/*.spec \
		src/vchan/_speedups*.so .coverage
