# The two set-up commands: `make serve` and `make test`. Everything they need
# is installed here, into .venv (and, for the tests, Debian's redis-server and
# chromium).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# every first-party plugin: each directory under plugins/ with a pyproject.toml,
# but adyton-llamacpp, whose engine builds from source (minutes), and
# adyton-steer, which runs on it: `make llamacpp` installs both
PLUGINS := $(filter-out plugins/adyton-llamacpp plugins/adyton-steer,$(patsubst %/pyproject.toml,%,$(wildcard plugins/adyton-*/pyproject.toml)))
# llama-cpp-python is source-only on the index: a portable CPU build (the VM
# advertises AVX-512 it cannot run), built once, then pip's wheel cache keeps it
LLAMACPP_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
ADYTON_HOME ?= $(HOME)/.local/share/adyton
export ADYTON_HOME

.PHONY: install install-test llamacpp model test-models redis postgresql nginx wrk chromium serve test lint bench bench-two-servers clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# the kernel and every first-party plugin, editable
$(VENV)/.installed: $(VENV)/bin/python pyproject.toml $(wildcard plugins/*/pyproject.toml)
	$(PIP) install -q -e . $(foreach p,$(PLUGINS),-e $(p))
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q -e '.[test]' $(foreach p,$(PLUGINS),-e '$(p)[test]')
	touch $@

# the second local engine (adyton-llamacpp), and adyton-steer (steering
# vectors, SAE monitoring), which needs it
$(VENV)/.installed-llamacpp: $(VENV)/.installed plugins/adyton-llamacpp/pyproject.toml plugins/adyton-steer/pyproject.toml
	CMAKE_ARGS="$(LLAMACPP_CMAKE_ARGS)" $(PIP) install -q -e plugins/adyton-llamacpp -e plugins/adyton-steer
	touch $@

# ... and their test dependencies
$(VENV)/.installed-llamacpp-test: $(VENV)/.installed-llamacpp $(VENV)/.installed-test
	CMAKE_ARGS="$(LLAMACPP_CMAKE_ARGS)" $(PIP) install -q -e 'plugins/adyton-llamacpp[test]' -e 'plugins/adyton-steer[test]'
	touch $@

# the linters: every package installed (mypy follows their imports), then
# ruff, mypy and the stubs of the untyped dependencies
$(VENV)/.installed-lint: $(VENV)/.installed-test $(VENV)/.installed-llamacpp-test
	$(PIP) install -q -e '.[lint]'
	touch $@

install: $(VENV)/.installed

llamacpp: $(VENV)/.installed-llamacpp

install-test: $(VENV)/.installed-test $(VENV)/.installed-llamacpp-test $(VENV)/.installed-lint

# the default model, fetched once (with progress) and checked by sha256
model: install
	@if $(VENV)/bin/adyton pull --help >/dev/null 2>&1; then $(VENV)/bin/adyton pull smollm2; \
	else echo "no backend with 'adyton pull' is installed: skipping the model"; fi

# a second architecture for adyton-llamacpp's tests (Gemma 3 270M, ~253 MB)
test-models: $(VENV)/.installed-llamacpp
	$(VENV)/bin/adyton llamacpp pull gemma3 --models-dir $(ADYTON_HOME)/test-models --quiet

# a Redis server for the limits tests (they start their own instances)
redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server (Debian package)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

# PostgreSQL for the database tests (they start their own throw-away clusters
# as the postgres user on loopback: adyton.testing_postgres)
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || { \
	  echo "installing postgresql (Debian package)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }

# nginx in front of two adyton servers for the deployment test (tests/deploy:
# it runs deploy/nginx/adyton.conf as a foreground process; Debian's unit is
# not started)
nginx:
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || { \
	  echo "installing nginx (Debian package)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; }

# wrk, the load generator of the two-servers benchmark (Debian package)
wrk:
	@command -v wrk >/dev/null 2>&1 || { \
	  echo "installing wrk (Debian package)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }

# a headless browser for adyton-web's console tests, driven by Playwright's
# Python client (its bundled browsers are never downloaded: Debian's is used)
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium (Debian package)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

serve: install model
	$(VENV)/bin/adyton serve

# the real-model tests must run here: a missing model fails instead of skipping
test: install-test model test-models redis postgresql nginx chromium
	ADYTON_TEST_MODEL=$(ADYTON_HOME)/models/SmolLM2-135M-Instruct.Q4_1.gguf ADYTON_REQUIRE_MODEL=1 \
	  $(PY) -m pytest -q

# ruff on the whole tree, mypy (with pydantic's plugin) on the kernel and every
# plugin package: both configured in pyproject.toml, both must be clean
lint: $(VENV)/.installed-lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: install-test model
	$(PY) tests/bench/kernel_overhead.py

# requests/s through nginx to one adyton server vs two (docs/benchmarks.md)
bench-two-servers: install-test redis postgresql nginx wrk
	$(PY) tests/bench/two_servers.py

clean:
	rm -rf $(VENV)
