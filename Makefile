# The two commands a newcomer needs: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= etc/sipproxy.toml
# apt-get needs root; a developer laptop goes through sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Tests that start servers run in a fresh network namespace with only loopback,
# so nothing they do can reach another host (root: plain netns; else a user ns).
NETNS := unshare $(shell [ "$$(id -u)" = 0 ] && printf '%s' -n || printf '%s' -rn) -- \
	sh -c 'ip link set lo up && exec "$$0" "$$@"'
# tool:debian-package pairs the test suite needs on the machine
SYSTEM_TOOLS := gcc:gcc python3-config:python3-dev sipp:sip-tester redis-server:redis-server unshare:util-linux ip:iproute2 baresip:baresip-core linphonec:linphone-cli fail2ban-regex:fail2ban htdigest:apache2-utils openssl:openssl systemd-analyze:systemd \
	node:nodejs npm:npm chromium:chromium certutil:libnss3-tools
# The browser phones' test (tests/browser/): JsSIP and puppeteer-core from npm,
# driving the Debian chromium above; `npm ci` installs exactly package-lock.json
# and downloads no browser.
BROWSER_DIR := tests/browser

.PHONY: run test venv system-deps browser-deps lint check
# tool:debian-package pairs only the benchmark needs (bench/, `make bench`)
BENCH_TOOLS := kamailio:kamailio taskset:util-linux
# The full matrix of docs/performance.md; `make bench BENCH_ARGS=...` for less.
BENCH_ARGS ?= --scenario all --transport all --store memory,sqlite,redis --server both
.PHONY: bench bench-quick bench-deps

$(BIN)/twistd: setup.py setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV) || { $(SUDO) apt-get update -q && \
		$(SUDO) apt-get install -y -q python3-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/python -c 'from sipproxy import native; print(native.summary())'
	touch $(SIP_BUILT) $@

# The install compiles sipproxy/sip/ with mypyc where it can (setup.py; pure
# Python with SIPPROXY_PURE=1 or without a C compiler). A compiled module shadows
# its source, so an edited source is rebuilt before anything runs: every target
# that runs code depends on venv. (Outside make, sipproxy/native.py notices the
# stale build at import and runs the sources, with a warning.)
SIP_SOURCES := $(wildcard sipproxy/sip/*.py)
SIP_BUILT := $(VENV)/.sip-built
$(SIP_BUILT): $(SIP_SOURCES) | $(BIN)/twistd
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/python -c 'from sipproxy import native; print(native.summary())'
	touch $@

venv: $(BIN)/twistd $(SIP_BUILT)

run: venv
	$(BIN)/twistd -n --pidfile= sipproxy --config $(CONFIG)

system-deps:
	@missing=""; for pair in $(SYSTEM_TOOLS); do \
		command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(BROWSER_DIR)/node_modules/.package-lock.json: $(BROWSER_DIR)/package-lock.json | system-deps
	cd $(BROWSER_DIR) && npm ci --no-audit --no-fund

$(BROWSER_DIR)/build/jssip.min.js: $(BROWSER_DIR)/node_modules/.package-lock.json
	cd $(BROWSER_DIR) && npm run build

browser-deps: $(BROWSER_DIR)/build/jssip.min.js

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy sipproxy tests twisted/plugins bench

# The whole suite runs on the build as installed (compiled where it could be), then
# the wire format's own tests (parser, RFC 4475/5118 corpus, hypothesis round trips)
# again on its pure Python; under CI=true tests/test_native.py checks that the
# first run was compiled and the second pure. system-deps comes first: a fresh
# machine needs its C compiler before lint's venv is built.
PURE_TESTS := tests/sip tests/registrar/test_rfc4475.py tests/test_native.py

check: system-deps lint browser-deps
	$(NETNS) $(BIN)/pytest
	SIPPROXY_PURE=1 $(BIN)/pytest -q $(PURE_TESTS)

test: check

bench-deps:
	@missing=""; for pair in $(BENCH_TOOLS); do \
		command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi

# SIPp ramps against one sipproxy (every store) and Kamailio, then two sipproxy
# processes on one port and one Redis, then memory per binding; loopback only
# (a network namespace). Takes 30-60 minutes.
bench: venv system-deps bench-deps
	$(NETNS) $(BIN)/python -m bench.sipp_ramp $(BENCH_ARGS)
	$(NETNS) $(BIN)/python -m bench.sipp_ramp --scenario register --store redis \
		--transport all --processes 2
	$(BIN)/python -m bench.binding_memory --count 100000

# The same, a few seconds per ramp at low rates: checks that every mode works.
bench-quick: venv system-deps bench-deps
	$(NETNS) $(BIN)/python -m bench.sipp_ramp --quick --users 10000 $(BENCH_ARGS)
	$(NETNS) $(BIN)/python -m bench.sipp_ramp --quick --scenario register \
		--store redis --transport all --processes 2
	$(BIN)/python -m bench.binding_memory --count 10000
