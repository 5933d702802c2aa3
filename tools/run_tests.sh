#!/usr/bin/env bash
# Run mmquant's test suite in the environment made by tools/install.sh.
#
# Without arguments it runs the whole suite with torch's native CPU kernels,
# then the tests that quantize trained models a second time with torch's
# portable kernels (ATEN_CPU_CAPABILITY=default): every float addition
# order changes there, so a test whose verdict hinges on this CPU's float
# kernels fails here, on the developer's machine, before it fails on
# another one. MMQUANT_KERNEL_PASS=0 skips that second pass; arguments
# (pytest's) run one pass with them.
#
# "No tests ran" (pytest exit code 5) is reported as a failure: a suite
# that collects nothing proves nothing.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${MMQUANT_VENV:-$ROOT/.venv}/bin/python"
[[ -x "$PY" ]] || { echo "test.sh: no environment at $PY;" \
    "run 'bash tools/install.sh' first" >&2; exit 1; }
cd "$ROOT"

# The tests that quantize trained models and compare their errors.
KERNEL_TESTS=(
    tests/openmmlab/test_classifiers.py
    tests/openmmlab/test_detectors.py
    tests/openmmlab/test_determinism.py
    tests/quantization
    tests/benchmarks/test_real_data.py
    tests/examples
)

run_pytest() {
    "$PY" -m pytest "$@"
    local rc=$?
    if [[ $rc -eq 5 ]]; then
        echo "test.sh: ERROR: pytest collected no tests" >&2
    fi
    return $rc
}

if [[ $# -gt 0 ]]; then
    run_pytest "$@"
    exit $?
fi
run_pytest tests
rc=$?
if [[ "${MMQUANT_KERNEL_PASS:-1}" != 0 ]]; then
    echo "test.sh: second pass with torch's portable CPU kernels" \
        "(ATEN_CPU_CAPABILITY=default): ${KERNEL_TESTS[*]}"
    ATEN_CPU_CAPABILITY=default run_pytest -p no:cacheprovider \
        "${KERNEL_TESTS[@]}"
    rc2=$?
    [[ $rc -ne 0 ]] || rc=$rc2
fi
exit $rc
