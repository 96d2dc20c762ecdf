#!/usr/bin/env bash
# The fast-classification must-show on one GPU, as one prepared call (about 8 min on an H100):
#
#     bash benchmarks/gpu_must_show.sh                 # writes reports/benchmarks/gpu/
#
# 1. a BreastMNIST score model at 32x32 (28x28 zero-padded; official split);
# 2. benchmarks/likelihood.py: the paper's released code path vs sgc's exact ODE at
#    rtol = atol = 1e-5 on the same model, images and probe (target: >= 30x, <= 0.01 bits/dim);
# 3. benchmarks/classify.py: every estimator on the whole test split, also through
#    torch.compile with CUDA graphs, each with its speed-up over the released code path
#    (target: the fastest >= 300x with AUC not below the exact ODE's);
# 4. both benchmarks at 64 and 256 px (zero-padded) on short-trained models: speed only.
#
# Stages whose JSON already exists are skipped, so a cut-off call can be rerun.
# A CPU check with small settings:
#     DEVICE=cpu STEPS=20 SHORT=5 SIZES=16 IMAGES=2 TEST=8 OUT=/tmp/gpu bash benchmarks/gpu_must_show.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-reports/benchmarks/gpu}
DEVICE=${DEVICE:-cuda}
DATA=${SGC_DATA:-../shared/data/medmnist}
STEPS=${STEPS:-6000}           # training steps of the 32 px model (the paper's budget)
SHORT=${SHORT:-500}            # training steps of the 64 / 256 px models (speed only)
SIZES=${SIZES:-"64 256"}
IMAGES=${IMAGES:-16}           # images for the released-code comparison
TEST=${TEST:-0}                # test images for classify.py at 32 px (0 = all 156)
COMPILE=${COMPILE:-reduce-overhead}
PY=${PY:-python}
THREADS=${THREADS:-4}
mkdir -p "$OUT"
log() { echo "[$(date +%T)] $*"; }
common=(--device "$DEVICE" --dataset breastmnist --data-root "$DATA" --threads "$THREADS")

log "environment"
$PY -c "import torch, sgc; print('torch', torch.__version__, '| cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else '')"

if [ ! -f "$OUT/run32/checkpoint.pt" ]; then
  log "1. train the 32 px score model ($STEPS steps)"
  $PY -m sgc.cli train --dataset breastmnist --data-root "$DATA" --data size=32 --run-dir "$OUT/run32" \
      --arch unet --model channels=32 'channel_mults=[1,2,2]' emb_dim=128 \
      --train steps="$STEPS" batch_size=128 lr=1e-3 warmup=200 ema_decay=0.999 hflip=true \
              weighting=sigma2 checkpoint_every="$STEPS" --device "$DEVICE"
fi

if [ ! -f "$OUT/likelihood_32.json" ]; then
  log "2. released code path vs sgc's exact ODE at 32 px"
  $PY benchmarks/likelihood.py "${common[@]}" --run-dir "$OUT/run32" --arch unet --size 32 \
      --images "$IMAGES" --classes 2 --out "$OUT/likelihood_32.json"
fi

if [ ! -f "$OUT/classify_32.json" ]; then
  log "3. every estimator on the test split at 32 px"
  $PY benchmarks/classify.py "${common[@]}" --run-dir "$OUT/run32" --arch unet --size 32 --images "$TEST" \
      --draws 16 64 256 --batch-size 156 --compile "$COMPILE" --released-code "$OUT/likelihood_32.json" \
      --out "$OUT/classify_32.json"
fi

for S in $SIZES; do
  if [ ! -f "$OUT/likelihood_$S.json" ]; then
    log "4. released code path vs sgc at $S px (model trained $SHORT steps)"
    $PY benchmarks/likelihood.py "${common[@]}" --run-dir "$OUT/run$S" --arch unet --size "$S" \
        --train-steps "$SHORT" --images 4 --classes 2 --out "$OUT/likelihood_$S.json"
  fi
  if [ ! -f "$OUT/classify_$S.json" ]; then
    log "4. estimators at $S px"
    $PY benchmarks/classify.py "${common[@]}" --run-dir "$OUT/run$S" --arch unet --size "$S" --images 32 \
        --draws 16 64 --batch-size 32 --compile "$COMPILE" --released-code "$OUT/likelihood_$S.json" \
        --out "$OUT/classify_$S.json"
  fi
done

log "summary"
$PY - "$OUT" $SIZES <<'EOF'
import json, sys
from pathlib import Path
out, sizes = Path(sys.argv[1]), ["32"] + sys.argv[2:]
for s in sizes:
    lik = json.loads((out / f"likelihood_{s}.json").read_text())
    cls = json.loads((out / f"classify_{s}.json").read_text())
    print(f"{s} px on {lik['device']}: exact ODE {lik['speedup']:.1f}x the released code path, "
          f"max difference {lik['max_diff_bits_per_dim']:.4f} bits/dim")
    ref_auc = cls["rows"][0]["auc"]
    ok = [r for r in cls["rows"] if r["auc"] >= ref_auc - 1e-9]
    best = max(ok, key=lambda r: r["speedup_vs_released_code"])
    print(f"   fastest estimator with AUC >= the exact ODE's ({ref_auc:.3f}): {best['estimator']}, "
          f"{best['speedup_vs_released_code']:.0f}x the released code path, AUC {best['auc']:.3f}")
EOF
