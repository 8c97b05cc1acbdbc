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

# The dashboard's browser test drives Debian's chromium; install it once (as root, with apt).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "run_tests.sh: installing Debian's chromium for the dashboard's browser test"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
      || echo "run_tests.sh: chromium could not be installed; the browser test will be skipped"
  else
    echo "run_tests.sh: chromium is missing and needs root to install; the browser test will be skipped"
  fi
fi

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# The integration tests start the local stack themselves (python -m stack up).
exec .venv/bin/python -m pytest "$@"
