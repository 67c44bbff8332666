# lossd: `make serve` and `make test` work on a fresh machine (they create .venv and install first).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt

.PHONY: lock serve test lint typecheck pytest openapi proto docs install install-dev install-browser install-redis install-node install-podman container-build-early install-bench bench bench-quick loadtest clean

# The runtime and development sets are installed from their lock files (every package pinned, every file's
# sha256 checked: `make lock` writes them from requirements*.txt); the benchmark's extras from their pins only
# (unhashed: a constraint file with hashes would turn on hash checking for them too).
$(VENV)/.runtime: requirements.lock constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --require-hashes -r requirements.lock
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.lock
	$(PIP) --require-hashes -r requirements-dev.lock
	touch $@

$(VENV)/.bench: $(VENV)/.dev requirements-bench.txt
	$(PIP) -r requirements-bench.txt
	touch $@

## lock: regenerate requirements.lock (requirements.txt) and requirements-dev.lock (requirements-dev.txt, the
## runtime versions kept) with pip-compile in a throwaway venv: every transitive dependency, hashes of every file
## of each version (torch's: the CPU wheel pip finds here). Existing pins are kept unless requirements*.txt move them.
## Where pip finds no CPU wheel of torch, point it at PyTorch's CPU wheel index (the Dockerfile's TORCH_INDEX_URL):
## PIP_EXTRA_INDEX_URL=<that index> make lock (a test fails if the lock's torch is not 2.13.0+cpu).
LOCK_VENV := $(or $(TMPDIR),/tmp)/lossd-pip-tools
PIP_COMPILE := CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/pip-compile -q --generate-hashes --allow-unsafe \
  --strip-extras --no-emit-index-url --no-emit-find-links --no-emit-trusted-host --annotation-style line -c constraints.txt
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q --disable-pip-version-check pip-tools==7.6.2
	$(PIP_COMPILE) -o requirements.lock requirements.txt
	$(PIP_COMPILE) -c requirements.lock -o requirements-dev.lock requirements-dev.txt
	rm -rf $(LOCK_VENV)

install: $(VENV)/.runtime
install-dev: $(VENV)/.dev install-browser install-redis install-node install-podman
## install-browser: Debian's chromium (as root, when missing) for tests/e2e/test_browser.py
install-browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
	  echo "chromium is not installed: tests/e2e/test_browser.py will fail until it is on PATH"
## install-redis: Debian's redis-server (as root, when missing) for the session tests against a real Redis
install-redis:
	@command -v redis-server >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q redis-server >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q redis-server >/dev/null 2>&1; }; }; } || \
	  echo "redis-server is not installed: the session tests against Redis will fail until it is on PATH"
## install-podman: Debian's podman, runc (for machines whose cgroups crun refuses) and debootstrap (as root, when
## missing) for tests/e2e/test_container.py, which builds and runs the image
install-podman:
	@{ command -v podman && command -v runc && command -v debootstrap; } >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q podman runc debootstrap >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q podman runc debootstrap >/dev/null 2>&1; }; }; } || \
	  echo "podman, runc or debootstrap is not installed: tests/e2e/test_container.py will fail until they are on PATH"
install-bench: $(VENV)/.bench
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q wrk >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q wrk >/dev/null 2>&1; }; }; } || \
	  echo "wrk is not installed: the benchmark falls back to an httpx load generator"

## serve: start the service on 127.0.0.1:8000 (LOSSD_* variables override the defaults)
serve: install
	$(PY) -m service

## test: lint, format check, type check and the whole test suite (the image's build starts first, in the
## background, as soon as the runtime set and podman are installed; tests/e2e/test_container.py waits for it)
test: $(VENV)/.runtime install-podman container-build-early install-dev lint typecheck pytest

## container-build-early: scripts/container.sh build in the background (its log: /var/tmp/lossd-container/early.log);
## its failure is reported by tests/e2e/test_container.py, which builds again
container-build-early: $(VENV)/.runtime install-podman
	@mkdir -p /var/tmp/lossd-container && \
	  { PIP_PYTHON=$(PY) nohup scripts/container.sh build </dev/null >/var/tmp/lossd-container/early.log 2>&1 & }

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install-dev
	$(VENV)/bin/mypy service

## pytest: the suites on two workers (test_container.py's on one of them, its group); scripts.container_report
## prints the image size that test_container.py measured
pytest: install-dev
	$(PY) -m pytest -n 2 --dist loadgroup -p scripts.container_report

## openapi: regenerate openapi/openapi.json from the app
openapi: install
	$(PY) -m service.openapi > openapi/openapi.json

## proto: regenerate the gRPC stubs (service/rpc/grpc_service_pb2*.py) from service/rpc/grpc_service.proto
proto: install-dev
	$(PY) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. service/rpc/grpc_service.proto

## docs: regenerate the README's loss table from the registry
docs: install
	$(PY) -m service.docs

## bench: lossd (its defaults, plus a "log off" row) against its peers, and sessions against /v1/evaluate, gRPC against HTTP (about 20 minutes): results, targets and gc pauses in bench/RESULTS.md, profiles in bench/
bench: install-bench
	$(PY) bench/run.py
	$(PY) bench/profile.py

## bench-quick: N=1 and N=1,000 only, with the targets, sessions and gRPC (about 8 minutes), written to bench/RESULTS-quick.md
bench-quick: install-bench
	$(PY) bench/run.py --quick --out bench/RESULTS-quick.md

## loadtest: a bounded load run (20,000 requests or 2 minutes) against a freshly started service, then 160
## clients sending a 39 MB body at once (peak memory against the README's formula)
loadtest: install-dev
	$(PY) scripts/loadtest.py --spawn --requests 20000 --seconds 120 --clients 16
	$(PY) scripts/bigbody_load.py --clients 160 --rounds 2

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

## install-node: examples/node's npm packages (@grpc/grpc-js, @grpc/proto-loader, from its package-lock.json) for
## tests/e2e/test_node_client.py's gRPC test, when node_modules is missing or older than the lock file
install-node:
	@if command -v node >/dev/null && command -v npm >/dev/null; then \
	  if [ ! -d examples/node/node_modules ] || [ examples/node/package-lock.json -nt examples/node/node_modules ]; then \
	    { cd examples/node && npm ci --no-audit --no-fund --loglevel=error >/dev/null && touch node_modules; } || \
	    echo "npm ci failed in examples/node: the Node gRPC test (tests/e2e/test_node_client.py) will fail until it succeeds"; \
	  fi; \
	else echo "node/npm are not installed: the Node gRPC test (tests/e2e/test_node_client.py) will fail until they are on PATH"; fi
