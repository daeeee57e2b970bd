#!/usr/bin/env bash
# Tools some tests use beyond Python (issue 12), installed idempotently; a second run is instant.
#  - kcat (Debian package): tests/integration/test_produce.py writes a message with it.
#  - chromium (Debian package): tests/integration/test_report.py renders the HTML report.
#  - the AsyncAPI parser (npm, pinned by scripts/asyncapi/package-lock.json), installed into
#    scripts/asyncapi/node_modules (project-local, never global): tests/unit/test_contracts.py
#    validates docs/asyncapi.yaml with it.
# A tool that cannot be installed is reported here, and the tests that need it skip saying why.
set -uo pipefail
cd "$(dirname "$0")/.."

if ! command -v kcat >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get install -y -qq kcat || { apt-get update -qq && apt-get install -y -qq kcat; }; } \
      >/dev/null 2>&1 || echo "install-test-tools: could not install kcat (apt-get)" >&2
  else
    echo "install-test-tools: kcat missing; install it with: sudo apt-get install -y kcat" >&2
  fi
fi

if [ ! -f scripts/asyncapi/node_modules/@asyncapi/parser/package.json ]; then
  if command -v npm >/dev/null 2>&1; then
    (cd scripts/asyncapi && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error) \
      >/dev/null 2>&1 || echo "install-test-tools: npm could not install @asyncapi/parser" >&2
  else
    echo "install-test-tools: npm missing; the AsyncAPI check will be skipped" >&2
  fi
fi
# Prometheus (Debian package; issue 13): tests/integration/test_metrics.py scrapes a running
# stream app and relay with it, and test_deploy_files.py checks deploy/prometheus with promtool.
if ! command -v prometheus >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get install -y -qq prometheus || { apt-get update -qq && apt-get install -y -qq prometheus; }; } \
      >/dev/null 2>&1 || echo "install-test-tools: could not install prometheus (apt-get)" >&2
  else
    echo "install-test-tools: prometheus missing; install it with: sudo apt-get install -y prometheus" >&2
  fi
fi
# Chromium (Debian package; issue 16): tests/integration/test_report.py renders the HTML report
# headless and checks that every plot is in the page.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get install -y -qq chromium || { apt-get update -qq && apt-get install -y -qq chromium; }; } \
      >/dev/null 2>&1 || echo "install-test-tools: could not install chromium (apt-get)" >&2
  else
    echo "install-test-tools: chromium missing; install it with: sudo apt-get install -y chromium" >&2
  fi
fi
# gettext catalogs (issue 16): the tests and scenarios read the catalogs of five Debian packages
# fetched into the test cache (apt-get download + unpack, nothing installed system-wide);
# tests/fixtures.py fetches them too when missing.
PYTHON_BIN=${PYTHON_BIN:-.venv/bin/python}
if [ -x "$PYTHON_BIN" ]; then
  COMPASS_DATA_DIR="${COMPASS_TEST_CACHE_DIR:-.data/test-cache}" "$PYTHON_BIN" -m compass.cli \
    data fetch --gettext >/dev/null 2>&1 \
    || echo "install-test-tools: could not fetch the gettext catalogs (run apt-get update?)" >&2
fi
exit 0
