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
.venv/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt

.venv/bin/ruff check .
.venv/bin/mypy
# The integration tests start the local stack themselves (python -m stack up).
exec .venv/bin/python -m pytest "$@"
