#!/usr/bin/env bash
# Lint openapi.yaml with Redocly CLI, pinned in contract/lint/package.json (+ package-lock.json),
# against the ruleset contract/lint/redocly.yaml (exceptions: contract/lint/.redocly.lint-ignore.yaml).
#   contract/lint.sh                 install the pinned tools if needed (npm ci), then lint
#   contract/lint.sh --install-only  only install (used by the TypeScript SDK check)
#   LINT_SPEC=contract/lint/served-openapi.yaml contract/lint.sh
#                                    lint a deployment's served spec instead (tests/test_served_spec.py
#                                    writes it there; its exceptions are listed under that name too)
# node_modules is cached under contract/lint (gitignored); it is re-installed when the lock changes.
set -euo pipefail
cd "$(dirname "$0")/lint"
export REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true NO_UPDATE_NOTIFIER=1

if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    echo "lint.sh: npm ci in contract/lint ..." >&2
    npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >&2
fi
[ "${1:-}" = "--install-only" ] && exit 0

spec=../../openapi.yaml
[ -n "${LINT_SPEC:-}" ] && spec=$(realpath --relative-to=. "$OLDPWD/$LINT_SPEC" 2>/dev/null || realpath --relative-to=. "$LINT_SPEC")
exec ./node_modules/.bin/redocly lint "$spec" --config redocly.yaml --format=stylish "$@"
