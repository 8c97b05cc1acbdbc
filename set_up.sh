#!/usr/bin/env bash
# The main job from a fresh clone: a virtualenv with the locked requirements, the local stack
# (or the cluster and database that .env names), the schema, 30 days of simulated history in
# an empty topic, then the pipeline over the messages not yet loaded, up to its default --limit
# of 100,000 (a 30-day backfill is well under that; run kafka_pipeline.py again for more),
# then the monthly partitions. Safe to re-run: each step
# skips what is already done, and the pipeline resumes where the database says it stopped.
set -euo pipefail
cd "$(dirname "$0")"

python=${PYTHON:-python3}
step() { printf '\n==> %s\n' "$*"; }

step "Python environment (.venv)"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
# The pipeline's and the dashboard's dependencies at the exact versions and hashes of the
# lock (see pyproject.toml), then the project itself, editable and without dependencies, so
# that its console scripts (kafka-pipeline, lmnh-stack, lmnh-dashboard, ...) run this checkout.
pip=(.venv/bin/pip install --quiet --disable-pip-version-check)
"${pip[@]}" --require-hashes -r requirements.lock
"${pip[@]}" --no-deps -e .

step "Kafka broker and PostgreSQL"
.venv/bin/python -m stack up

step "Schema and reference data"
.venv/bin/python -m stack schema

step "30 days of simulated kiosk history (only into an empty topic)"
.venv/bin/python kiosk_simulator.py --backfill 30 --only-into-empty-topic > /dev/null

step "Pipeline: validate and load up to 100,000 messages not yet loaded (invalid ones logged to invalid-messages.log)"
.venv/bin/python kafka_pipeline.py --from-beginning --logfile invalid-messages.log

step "Monthly partitions: months ahead made, the history moved out of the DEFAULT partitions (what lmnh-maintain.timer does daily)"
.venv/bin/python -m lmnh.schema maintain | tail -n 1

step "A staff account to sign in with (local stack only, when there is none)"
# The dashboard is for signed-in staff. On the local stack, an `admin` with every role is made
# once, its password random and kept in .stack/admin-password (git-ignored, mode 0600).
if .venv/bin/python -c 'from lmnh.cli import load_settings; import sys; sys.exit(0 if load_settings(None).database.local else 1)'; then
  if [ -z "$(.venv/bin/python -m dashboard.accounts list)" ]; then
    mkdir -p .stack
    ( umask 077; .venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(15))' > .stack/admin-password )
    .venv/bin/python -m dashboard.accounts add admin --name "Local admin" --role admin \
      --role exhibitions --role security --role operations --password-stdin < .stack/admin-password
  fi
  if [ -f .stack/admin-password ]; then
    echo "sign in as admin with the first password, $(cat .stack/admin-password) (change it: .venv/bin/lmnh-accounts set-password admin)"
  fi
else
  echo "your own database: make staff accounts with .venv/bin/lmnh-accounts add (docs/dashboards.md)"
fi

cat <<'NEXT'

Done. Next (in other terminals; the dashboard shows it live):
  live traffic:   .venv/bin/python kiosk_simulator.py --rate 20
  keep loading:   .venv/bin/python kafka_pipeline.py --follow
  look at it:     psql "postgresql://lmnh:lmnh-local@127.0.0.1:55432/lmnh" -c 'SELECT * FROM rejected_message LIMIT 5'
  stop the stack: .venv/bin/python -m stack down
(With DB_HOST or BOOTSTRAP_SERVERS in .env, your own database and cluster were used instead.)
NEXT

# `./set_up.sh --no-dashboard` stops here. Otherwise the dashboard runs: in the foreground
# until Ctrl-C from a terminal, in the background (log in .stack/dashboard.log) from a script,
# so that an unattended run ends with it running instead of hanging.
if [ "${1:-}" = "--no-dashboard" ]; then
  exit 0
fi
urls="http://127.0.0.1:8050/exhibitions, http://127.0.0.1:8050/safety and http://127.0.0.1:8050/feed"
answers() {
  .venv/bin/python -c 'import sys, urllib.request
try:
    urllib.request.urlopen("http://127.0.0.1:8050/healthz", timeout=2)
except Exception:
    sys.exit(1)'
}
if answers; then
  step "Dashboard: already running; open $urls"
elif [ -t 0 ]; then
  step "Dashboard: open $urls (Ctrl-C to stop)"
  exec .venv/bin/python -m dashboard
else
  step "Dashboard: starting in the background; open $urls"
  mkdir -p .stack
  nohup .venv/bin/python -m dashboard > .stack/dashboard.log 2>&1 &
  for _ in $(seq 1 30); do
    answers && break
    sleep 1
  done
  answers || { echo "the dashboard did not start; see .stack/dashboard.log" >&2; exit 1; }
  echo "dashboard running (pid $!); stop it with: kill $!"
fi
