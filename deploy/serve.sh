#!/usr/bin/env bash
# Quick start, part 1: installs what is missing (Debian's chromium, chromium-headless-shell
# and xvfb), builds the release binary and serves ingot on http://127.0.0.1:3000. Extra
# arguments go to `ingot` (see `ingot --help`), for example: deploy/serve.sh --max-sessions 8
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh
cargo build --release --locked --bin ingot
exec target/release/ingot "$@"
