# Two commands for users: `make run` and `make test`. Everything else is set up on demand, idempotently.
PYTHON_BIN ?= python3.11
VENV       := .venv
PY         := $(VENV)/bin/python
PIP        := $(VENV)/bin/pip
PY_STAMP   := $(VENV)/.deps-installed
SYS_STAMP  := $(VENV)/.system-deps-installed
# Debian packages: chromium for the browser tests, Mesa EGL/GL for headless VTK.
APT_PACKAGES := chromium fonts-dejavu-core libegl1 libegl-mesa0 libgl1-mesa-dri libglu1-mesa libxrender1
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: run test soak bench venv system-deps clean

venv: $(PY_STAMP)

$(PY_STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON_BIN) -m venv $(VENV)
	$(PIP) install --disable-pip-version-check -q --upgrade pip setuptools wheel
	$(PIP) install --disable-pip-version-check -q -c constraints.txt -e '.[finetuned,test]'
	@touch $@

system-deps: $(SYS_STAMP)

$(SYS_STAMP): Makefile | $(PY_STAMP)
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@touch $@

run: $(PY_STAMP)
	$(PY) optim.py

# Two pytest workers, one test file each at a time (module fixtures such as live servers are not duplicated):
# many tests wait on child processes (build and model workers, servers, Chromium), so two files overlap well;
# 822 s instead of 1194 s on the 2-core CI machine. TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
test: $(PY_STAMP) $(SYS_STAMP)
	$(PY) -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

# The soak tests include a Schemathesis run against the generated OpenAPI document (tests/test_schemathesis.py;
# OPTIM_SCHEMATHESIS_EXAMPLES per operation, default 25; output in test-artifacts/schemathesis/).
soak: $(PY_STAMP) $(SYS_STAMP)
	$(PY) -m pytest -m soak

bench: $(PY_STAMP)
	$(PY) bench/startup.py
	$(PY) bench/cad.py
	$(PY) bench/vlm_load.py
	$(PY) bench/adapter_switch.py
	$(PY) bench/latency.py
	$(PY) bench/queue_latency.py
	$(PY) bench/photo_rss.py
	$(PY) bench/latency.py patch
	$(PY) bench/fit.py
	$(PY) bench/proposals.py

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
