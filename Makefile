# The two commands a newcomer needs: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= etc/sipproxy.toml
# apt-get needs root; a developer laptop goes through sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Tests that start servers run in a fresh network namespace with only loopback,
# so nothing they do can reach another host (root: plain netns; else a user ns).
NETNS := unshare $(shell [ "$$(id -u)" = 0 ] && echo -n || echo -rn) -- \
	sh -c 'ip link set lo up && exec "$$0" "$$@"'
# tool:debian-package pairs the test suite needs on the machine
SYSTEM_TOOLS := sipp:sip-tester redis-server:redis-server unshare:util-linux ip:iproute2 baresip:baresip-core fail2ban-regex:fail2ban htdigest:apache2-utils openssl:openssl systemd-analyze:systemd

.PHONY: run test venv system-deps lint check

$(BIN)/twistd: setup.py setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV) || { $(SUDO) apt-get update -q && \
		$(SUDO) apt-get install -y -q python3-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/twistd

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

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy sipproxy tests twisted/plugins

check: lint system-deps
	$(NETNS) $(BIN)/pytest

test: check
