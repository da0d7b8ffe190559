# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Each creates .venv when it is missing and installs the project into it.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# The suite runs on pytest-xdist workers (0: in this process). Most tests wait on subprocesses and
# servers, so more workers than cores pay: `make check` measured 442 s on 2 workers, 414 s on 4 and
# 299 s on 6 on a busy 2-core machine (97 s on 6 on a quiet one). `make test` keeps 4: its heavy suites (claim floods, broker
# restarts) starve each other with more, and the arm64 fleet test sets its length whatever the count.
# --dist loadgroup keeps the tests that share an expensive module fixture (xdist_group) on one worker.
TEST_WORKERS ?= 4
CHECK_WORKERS ?= 6
XDIST := --dist loadgroup
# What `make check` leaves out: the long suites and the tests that need a service or a system tool
# (tests/conftest.py marks them by the fixtures they use).
NEEDS_SERVICE := slow or redis or rabbitmq or mongo or nginx or netns or chromium

.PHONY: demo test check lint bench clean help system-libs appliance-tools

help:
	@echo "make demo   run ShopCardd end to end on the embedded profile (keys, voucher, QR, counter, claims)"
	@echo "make test   lint, check the import walls, run the whole test suite (installs libzbar0 as root)"
	@echo "make check  lint and the tests that need no service and are not slow: the edit loop"
	@echo "make lint   ruff and the import walls only (make test and make check run them first)"
	@echo "make bench  print the voucher benchmark"
	@echo "make clean  remove the virtual environment and demo output"

# $(call apt_install,PACKAGE,WHY): install a Debian package where we can (root with apt-get),
# else say in one line what to run. WHY must hold no comma.
define apt_install
if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
    echo "installing $(1) ($(2))"; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get install -y -qq $(1) >/dev/null 2>&1 || \
    { apt-get update -qq && apt-get install -y -qq $(1) >/dev/null; } || \
    echo "$(1) could not be installed: run apt-get update && apt-get install $(1)"; \
else \
    echo "$(1) is missing ($(2)): run sudo apt-get install $(1)"; \
fi
endef

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "ShopCardd needs Python 3.11 or newer")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) >/dev/null 2>&1 || \
	{ rm -rf $(VENV); $(call apt_install,python3-venv,Debian keeps venv apart); $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

# pyzbar loads the system's libzbar (Debian: libzbar0), shopcardd-bench claims drives the API
# with wrk, and the console's tests drive Debian's headless Chromium: pip can install none of them.
# Install them where we can, else say in one line what to run (their tests skip until then; under
# CI=true they fail).
system-libs:
	@$(PYTHON) -c 'import ctypes.util, sys; sys.exit(ctypes.util.find_library("zbar") is None)' || \
	{ $(call apt_install,libzbar0,the system library of the pyzbar QR decoder); }
	@command -v curl >/dev/null && command -v jq >/dev/null || \
	{ $(call apt_install,curl jq,the API guide's walkthrough that tests/test_docs.py runs); }
	@command -v wrk >/dev/null || { $(call apt_install,wrk,the load generator of shopcardd-bench claims); }
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	{ $(call apt_install,chromium chromium-driver,the headless browser of the console tests); }

# tests/appliance provisions an arm64 Debian root (debootstrap; qemu-user-static runs its binaries
# through binfmt_misc), checks the units with systemd-analyze and runs nginx: install them where
# we can, and register qemu's arm64 interpreter (a container may need binfmt_misc mounted).
appliance-tools:
	@missing=""; \
	for pair in debootstrap:debootstrap qemu-aarch64-static:qemu-user-static update-binfmts:binfmt-support \
	    systemd-analyze:systemd nginx:nginx-light; do \
	    PATH="$$PATH:/usr/sbin:/sbin" command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ]; then $(call apt_install,$$missing,the appliance tests: an arm64 root and the units); fi; \
	if [ "$$(id -u)" = 0 ] && [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then \
	    [ -e /proc/sys/fs/binfmt_misc/status ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || true; \
	    PATH="$$PATH:/usr/sbin:/sbin" update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || \
	    echo "qemu-aarch64 is not registered with binfmt_misc: the arm64 tests will say"; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: system-libs appliance-tools lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) $(XDIST) $(PYTEST_ARGS)

check: lint
	$(BIN)/python -m pytest -n $(CHECK_WORKERS) $(XDIST) -q -m "not ($(NEEDS_SERVICE))" $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/shopcardd-bench voucher

clean:
	rm -rf $(VENV) demo-out
