#!/usr/bin/env bash
# The test suite from a fresh clone: installs what it needs, starts the local stack (a real
# Kafka broker and a real PostgreSQL server), lints, then runs pytest. Extra arguments go to
# pytest, e.g. `./run_tests.sh tests/unit -q`.
set -euo pipefail
cd "$(dirname "$0")"

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
# Every dependency at the exact version and hash of the lock (see pyproject.toml), then the
# project itself, editable and without dependencies, so that its console scripts
# (kafka-pipeline, lmnh-stack, ...) exist and run this checkout.
pip=(.venv/bin/pip install --quiet --disable-pip-version-check)
"${pip[@]}" --require-hashes -r requirements-dev.lock
"${pip[@]}" --no-deps -e .
# The AWS template's checkers (cfn-lint, checkov, shellcheck) in a virtualenv of their own, from
# their own hashed lock: checkov's hundred dependencies stay out of .venv
# (deploy/aws/checks-requirements.in says why). tests/deploy/test_cloudformation.py uses it.
if [ ! -x .venv-deploy-checks/bin/python ]; then
  "$python" -m venv .venv-deploy-checks
fi
.venv-deploy-checks/bin/pip install --quiet --disable-pip-version-check \
  --require-hashes -r deploy/aws/checks.lock

# Debian packages some tests need, installed once (as root, with apt): chromium for the
# dashboard's browser test; podman, mmdebstrap and runc for the image and systemd tests
# (tests/deploy/); prometheus (with promtool) for the alert rules' and the metrics' tests
# (tests/deploy/test_prometheus.py); nftables for the silent-fault tests (dropped packets);
# caddy for the dashboard behind its TLS proxy; node for the identity provider. Without them those
# tests are skipped, saying why.
apt_missing=()
command -v chromium >/dev/null 2>&1 || apt_missing+=(chromium)
for tool in podman mmdebstrap runc; do
  command -v "$tool" >/dev/null 2>&1 || apt_missing+=("$tool")
done
command -v promtool >/dev/null 2>&1 || apt_missing+=(prometheus)
command -v nft >/dev/null 2>&1 || apt_missing+=(nftables)
command -v caddy >/dev/null 2>&1 || apt_missing+=(caddy)
# Node.js runs the local OpenID Connect provider (stack/identity) for the sign-in tests; its
# npm packages are installed from their lock on first use.
command -v npm >/dev/null 2>&1 || apt_missing+=(nodejs npm)
if [ ${#apt_missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "run_tests.sh: installing Debian's ${apt_missing[*]} for the browser, image, systemd and metrics tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_missing[@]}" >/dev/null \
      || echo "run_tests.sh: ${apt_missing[*]} could not be installed; the tests that need them will be skipped"
  else
    echo "run_tests.sh: ${apt_missing[*]} missing, and installing needs root; the tests that need them will be skipped"
  fi
fi

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# The integration tests start the local stack themselves (python -m stack up).
exec .venv/bin/python -m pytest "$@"
