#!/usr/bin/env bash
# On a machine with CUDA: run the parity, API and end-to-end suites against a CUDA device (bad class
# indices must be 422 problems and the next request must still work), then print CPU vs CUDA timings.
# Uses .venv when `make install-dev` has made one; on a machine without a registry, wheels in .whl/ are
# installed over the system torch instead (see README, "GPU").
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
else
  PY=${PYTHON:-python3}
  if [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/lossd-site \
      .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/lossd-site:$PWD"
  fi
fi
"$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print("torch", torch.__version__, "on", torch.cuda.get_device_name())' || exit 1
status=0
# without a registry, the machine may lack the clients some suites use (tritonclient, schemathesis, node,
# chromium, a JDK, redis-server):
# those suites skip themselves or are left out; everything that computes a loss runs on CUDA
extra=()
"$PY" -c "import tritonclient" 2>/dev/null || extra+=(--ignore=tests/e2e/test_tritonclient.py --ignore=tests/e2e/test_tritonclient_grpc.py)
command -v redis-server >/dev/null || extra+=(--ignore=tests/e2e/test_sessions_redis.py)
"$PY" -c "import schemathesis" 2>/dev/null || extra+=(--ignore=tests/contract/test_schemathesis.py)
command -v chromium >/dev/null || extra+=(--ignore=tests/e2e/test_browser.py)
command -v java >/dev/null && command -v curl >/dev/null || extra+=(--ignore=tests/e2e/test_http_clients.py)
command -v node >/dev/null || extra+=(--ignore=tests/e2e/test_node_client.py)
LOSSD_TEST_DEVICE=cuda "$PY" -m pytest -p no:cacheprovider -p no:benchmark -n "${GPU_CHECK_WORKERS:-6}" -W "ignore::DeprecationWarning" \
  tests/contract tests/api tests/e2e "${extra[@]}" || status=$?
"$PY" scripts/gpu_timings.py || status=$?
exit $status
