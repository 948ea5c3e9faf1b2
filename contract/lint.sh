#!/usr/bin/env bash
# Lint openapi.yaml with Redocly CLI, pinned in contract/lint/package.json (+ package-lock.json),
# against the ruleset contract/lint/redocly.yaml (exceptions: contract/lint/.redocly.lint-ignore.yaml).
#   contract/lint.sh                 install the pinned tools if needed (npm ci), then lint
#   contract/lint.sh --install-only  only install (used by the TypeScript SDK check)
# node_modules is cached under contract/lint (gitignored); it is re-installed when the lock changes.
set -euo pipefail
cd "$(dirname "$0")/lint"
export REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true NO_UPDATE_NOTIFIER=1

if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    echo "lint.sh: npm ci in contract/lint ..." >&2
    npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >&2
fi
[ "${1:-}" = "--install-only" ] && exit 0

exec ./node_modules/.bin/redocly lint ../../openapi.yaml --config redocly.yaml --format=stylish "$@"
