#!/usr/bin/env bash
# Sets up the environment (scripts/setup_env.sh) and runs the test suite: unit tests and the integration tests on
# real data; tests marked `slow` stay out (run them with `pytest -m slow`).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=$("$repo/scripts/setup_env.sh" | tail -n 1)
cd "$repo"
exec "$venv/bin/python" -m pytest -m "not slow" -q "$@"
