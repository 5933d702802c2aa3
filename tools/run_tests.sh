#!/usr/bin/env bash
# Run mmquant's test suite in the environment made by tools/install.sh.
# "No tests ran" (pytest exit code 5) is reported as a failure: a suite
# that collects nothing proves nothing.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${MMQUANT_VENV:-$ROOT/.venv}/bin/python"
[[ -x "$PY" ]] || { echo "test.sh: no environment at $PY;" \
    "run 'bash tools/install.sh' first" >&2; exit 1; }
cd "$ROOT"
"$PY" -m pytest tests "$@"
rc=$?
if [[ $rc -eq 5 ]]; then
    echo "test.sh: ERROR: pytest collected no tests" >&2
fi
exit $rc
