# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Each creates .venv when it is missing and installs the project into it.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test lint bench clean help system-libs

help:
	@echo "make demo   run ShopCardd end to end on the embedded profile (keys, voucher, QR, counter, claims)"
	@echo "make test   lint, check the import walls, run the test suite (installs libzbar0 as root)"
	@echo "make lint   ruff and the import walls only (make test runs them first)"
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

# pyzbar loads the system's libzbar (Debian: libzbar0), which pip cannot install: install it
# where we can, else say in one line what to run (its tests skip until then; under CI=true they fail).
system-libs:
	@$(PYTHON) -c 'import ctypes.util, sys; sys.exit(ctypes.util.find_library("zbar") is None)' || \
	{ $(call apt_install,libzbar0,the system library of the pyzbar QR decoder); }

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: system-libs lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/shopcardd-bench voucher

clean:
	rm -rf $(VENV) demo-out
