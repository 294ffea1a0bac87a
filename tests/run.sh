#!/usr/bin/env bash
# Quick start, part 2: the whole test suite. Installs what is missing (Chromium, Node.js,
# the pinned npm packages of the end-to-end clients), then runs formatting and lint checks,
# the Rust unit and integration tests against real Chromium, the Node end-to-end tests
# (puppeteer-core, playwright-core, steel-sdk) against a gateway each test file starts, and
# the Python tests (steel-sdk and Playwright for Python, and schemathesis fuzzing every
# operation of /v1/openapi.json against a live gateway for about half a minute, pinned in
# tests/py/requirements.txt and tests/py/constraints.txt, in the virtual environment
# tests/py/.venv; Playwright only connects over CDP, so no browser is downloaded).
# The Node and Python stages run on the default engine (the headless shell where it is
# installed), then the whole of both again with full Chromium (INGOT_ENGINE=chromium, which
# the gateways the harnesses start inherit and check in /healthz), so that neither engine rots.
set -euo pipefail
cd "$(dirname "$0")/.."

deploy/install-deps.sh --tests

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
echo "== cargo test (unit and integration tests, real Chromium)"
cargo test --locked
echo "== cargo test -p ingot-bench (the benchmark program's unit tests; no Chromium)"
cargo test --locked -p ingot-bench
echo "== end-to-end tests (Node: puppeteer-core, playwright-core, steel-sdk)"
(cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error)
INGOT_BIN="$PWD/target/debug/ingot" node --test tests/e2e/
echo "== end-to-end tests (Python: steel-sdk, playwright, schemathesis)"
[ -x tests/py/.venv/bin/python ] || python3 -m venv tests/py/.venv
tests/py/.venv/bin/python -m pip install --quiet --disable-pip-version-check \
  -r tests/py/requirements.txt -c tests/py/constraints.txt
INGOT_BIN="$PWD/target/debug/ingot" tests/py/.venv/bin/python -m pytest -q tests/py
echo "== end-to-end tests again on full Chromium (INGOT_ENGINE=chromium: the whole Node and Python suites)"
INGOT_ENGINE=chromium INGOT_BIN="$PWD/target/debug/ingot" node --test tests/e2e/
INGOT_ENGINE=chromium INGOT_BIN="$PWD/target/debug/ingot" tests/py/.venv/bin/python -m pytest -q tests/py
