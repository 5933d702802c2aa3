#!/usr/bin/env bash
# Example CI job (NOT run by .ci/run): the ImageNet/COCO benchmark
# regression check, for a runner that has the data mounted and OpenMMLab's
# float checkpoints in checkpoints/ (configs/benchmarks/in1k_coco.py names
# them). See docs/benchmarks.md, "Regression check".
#
# The committed values are your own baseline, measured once on the same
# kind of runner and committed with the entry configs it writes:
#
#   python tools/analysis_tools/benchmark.py configs/benchmarks/in1k_coco.py \
#       --models ResNet-18 --data-root "$IMAGENET_ROOT" --device cuda \
#       --metafile ci/benchmarks/in1k/metafile.yml
#   python tools/analysis_tools/benchmark.py configs/benchmarks/in1k_coco.py \
#       --models 'RetinaNet R-50-FPN' 'Faster R-CNN R-50-FPN' \
#       --data-root "$COCO_ROOT" --device cuda \
#       --metafile ci/benchmarks/coco/metafile.yml
#
# Environment:
#   IMAGENET_ROOT  ImageNet folder (mmpretrain layout: train/, val/, meta/)
#   COCO_ROOT      COCO folder (val2017/, train2017/, annotations/)
#   BASELINE_DIR   folder of the two baselines (default ci/benchmarks)
#   TOLERANCE      largest allowed drop in points (default 0.3)
#   DEVICE         cuda or cpu (default cuda)
#
# Exit status: 0 all within tolerance; 1 a metric fell by more than the
# tolerance (the table printed above says which); 3 an entry could not be
# checked (--strict: missing data, checkpoint or baseline value), so a
# runner that lost its ImageNet mount fails instead of passing silently.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
: "${IMAGENET_ROOT:?set IMAGENET_ROOT to the ImageNet folder}"
: "${COCO_ROOT:?set COCO_ROOT to the COCO folder}"
BASELINE_DIR="${BASELINE_DIR:-ci/benchmarks}"
TOLERANCE="${TOLERANCE:-0.3}"
DEVICE="${DEVICE:-cuda}"
PY="${MMQUANT_VENV:-.venv}/bin/python"

status=0
"$PY" tools/analysis_tools/benchmark.py configs/benchmarks/in1k_coco.py \
    --models ResNet-18 --data-root "$IMAGENET_ROOT" --device "$DEVICE" \
    --work-dir work_dirs/benchmark/ci_in1k \
    --check "$BASELINE_DIR/in1k/metafile.yml" \
    --tolerance "$TOLERANCE" --strict || status=$?
"$PY" tools/analysis_tools/benchmark.py configs/benchmarks/in1k_coco.py \
    --models 'RetinaNet R-50-FPN' 'Faster R-CNN R-50-FPN' \
    --data-root "$COCO_ROOT" --device "$DEVICE" \
    --work-dir work_dirs/benchmark/ci_coco \
    --check "$BASELINE_DIR/coco/metafile.yml" \
    --tolerance "$TOLERANCE" --strict || status=$?
# the tables: work_dirs/benchmark/ci_{in1k,coco}/check.md
exit "$status"
