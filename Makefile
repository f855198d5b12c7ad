# The two commands of the README: `make demo` and `make test`. Both set up
# what they need on a fresh Debian machine and are safe to run again.
SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -eu -o pipefail -c

VENV := .venv
PY := $(VENV)/bin/python
CPP_BUILD := build/cpp
# Debian packages: compilers and libraries for the C++ core, the real
# components the tests start (sshd, rsync, PostgreSQL, Chromium), and the
# peers the benchmarks compare against (pssh, ClusterShell), clang-format for
# the C++ style check, and a Prometheus server that the canary judge's
# query-API source is tested against.
DEBIAN_PACKAGES := g++ make libboost-dev libboost-filesystem-dev libboost-math-dev \
	libfmt-dev libgtest-dev libsimdjson-dev rsync openssh-server openssh-client postgresql \
	chromium chromium-driver pssh clustershell clang-format prometheus

.PHONY: demo demo-stop test test-cpp test-python lint-cpp lint-python lint-stubs deps venv install cpp-tests clean

demo: install
	PYTHONPATH=tests $(PY) -m harness.demo

# The demo leaves its master and workers running for the web UI; this stops
# exactly the processes it recorded in demo/pids.json.
demo-stop:
	@if [ -x $(PY) ]; then PYTHONPATH=tests $(PY) -m harness.demo --stop; else echo "demo: nothing to stop (no $(VENV))"; fi

test: lint-cpp lint-python lint-stubs test-cpp test-python

# The C++ style (.clang-format): fails on any file clang-format would change.
CPP_SOURCES = $(wildcard cpp/include/cd/*.hpp cpp/src/*.cpp cpp/src/*.hpp cpp/tests/*.cpp cpp/tests/*.hpp \
	bindings/*.cpp bindings/*.hpp)
lint-cpp: deps
	clang-format --dry-run -Werror $(CPP_SOURCES)

# Python style, kept by the tools (configured in pyproject.toml): lint, then
# formatting, checked and never rewritten here (`ruff format` fixes it).
lint-python: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The checked-in stub buildbot_steps/_core.pyi against the compiled module
# (after `install` has built it): stubtest imports both and fails on any name,
# kind, argument or constant that differs. The allowlist names only what
# pybind11 builds that a stub cannot say, each entry with its reason.
lint-stubs: install
	$(PY) -m mypy.stubtest buildbot_steps._core --allowlist bindings/stubtest-allowlist.txt

deps:
	@missing=$$(dpkg-query -W -f='$${Package} $${Status}\n' $(DEBIAN_PACKAGES) 2>/dev/null \
	  | awk '$$NF != "installed" {print $$1}'; \
	  for p in $(DEBIAN_PACKAGES); do dpkg-query -W $$p >/dev/null 2>&1 || echo $$p; done)
	if [ -n "$$missing" ]; then
	  echo "installing Debian packages: $$(echo $$missing | tr '\n' ' ')"
	  apt-get update -qq
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$(echo $$missing | tr '\n' ' ' ) >/dev/null
	fi

venv: deps
	@[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip scikit-build-core pybind11 cmake ninja

# An editable install: Python sources are used in place, the extension is
# compiled into build/ and reinstalled here when C++ changes.
install: venv
	@mkdir -p build
	flock build/.install.lock $(PY) -m pip install -q --no-build-isolation -e '.[test]'

cpp-tests: venv
	$(VENV)/bin/cmake -S . -B $(CPP_BUILD) -G Ninja -DCMAKE_MAKE_PROGRAM=$(CURDIR)/$(VENV)/bin/ninja \
	  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCD_BUILD_PYTHON=OFF -DCD_BUILD_TESTS=ON >/dev/null
	$(VENV)/bin/cmake --build $(CPP_BUILD) -j2

test-cpp: cpp-tests
	$(VENV)/bin/ctest --test-dir $(CPP_BUILD) --output-on-failure -j2

test-python: install
	$(PY) -m pytest

clean:
	rm -rf build $(VENV)
