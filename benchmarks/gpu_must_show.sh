#!/usr/bin/env bash
# Every GPU figure of the fast-classification and GPU-engine work, as ONE prepared call of at
# most 8 minutes on an H100 / H200:
#
#     SGC_DATA=<data folder> bash benchmarks/gpu_must_show.sh    # writes reports/benchmarks/gpu/
#
# The data are found by sgc's data-root rule: $SGC_DATA/medmnist/breastmnist.npz, else
# ~/.medmnist/breastmnist.npz; DATA_ROOT=<folder with breastmnist.npz> names the folder itself.
#
# stage (planned minutes on an H100/H200; hard cap in seconds, after which the stage is stopped
# and the next one runs; a rerun resumes it):
# 0. environment (CUDA start)                                                 0.1
# 1. train the 32 px BreastMNIST score model with sgc's default engine on a  1.2   (cap 80 s; SIGTERM
#    GPU (one CUDA graph per step), STEPS steps or what the cap allows            at the cap writes a
#                                                                                 checkpoint)
# 2. benchmarks/gpu_profile.py on that model: training steps/s eager vs      3.0   (cap 180 s)
#    graph, one ODE evaluation at 32 / 312 rows (+ kernel time), the exact
#    ODE and dpm2 vs the paper's released code path at 16 and 156 images,
#    the bound; writes likelihood_32.json (released code path, 16 images)
# 3. benchmarks/classify.py: every estimator on the 156 test images, eager   0.8   (cap 60 s)
#    and with CUDA graphs, speed-up over the released code path
# 4. 64 px, then 256 px (zero-padded): a short-trained model, the released   0.9 + 1.4  (caps 60 s, 90 s)
#    code path vs sgc's exact ODE on 4 images, the estimators: speed only
#                                                             total planned ~7.4 min, caps 8.0 min
# Every stage writes JSON; stages whose JSON (or checkpoint) exists are skipped, so a cut-off call
# is finished by running the same command again. A stage that fails or hits its cap does not stop
# the others. The last lines print the summary (and reports/benchmarks/gpu/gpu_profile.md).
#
# A CPU check of every stage with tiny settings (tests/test_gpu_profile.py runs it under make test):
#     bash benchmarks/gpu_must_show.sh --smoke            # OUT=<scratch folder>, else a new temporary one
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--smoke" ]; then   # defaults for the CPU check; OUT should name a scratch folder
  DEVICE=cpu STEPS=${STEPS:-20} SHORT=${SHORT:-4} SIZES=${SIZES:-16} IMAGES=${IMAGES:-2} TEST=${TEST:-2}
  CHANNELS=${CHANNELS:-8} BATCH=${BATCH:-16} DRAWS=${DRAWS:-4} REPEATS=${REPEATS:-1} RTOL=${RTOL:-1e-3}
  CAP_SCALE=${CAP_SCALE:-4}     # two shared CPU cores are slower than one GPU, even at these sizes
  PROFILE="--smoke" THREADS=${THREADS:-1} OUT=${OUT:-$(mktemp -d -t sgc-gpu-smoke-XXXX)}
elif [ -n "${1:-}" ]; then
  echo "usage: bash benchmarks/gpu_must_show.sh [--smoke]   (settings through environment variables, see above)" >&2
  exit 2
fi
OUT=${OUT:-reports/benchmarks/gpu}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-6000}           # training steps of the 32 px model (the cap may stop it earlier)
SHORT=${SHORT:-300}            # training steps of the 64 / 256 px models (speed only)
SIZES=${SIZES:-"64 256"}
IMAGES=${IMAGES:-16}           # images for the released-code comparison
TEST=${TEST:-0}                # test images for classify.py at 32 px (0 = all 156)
PROFILE=${PROFILE:-}           # extra gpu_profile.py options (e.g. --smoke on a CPU)
CHANNELS=${CHANNELS:-32}       # base width of the score UNets
BATCH=${BATCH:-128}            # training batch of the 32 px model
DRAWS=${DRAWS:-"16 64 256"}    # bound draws benchmarked at 32 px
REPEATS=${REPEATS:-3}          # timed passes of every path
RTOL=${RTOL:-1e-5}             # tolerance (rtol = atol) of the exact ODE in the released-code comparisons
CAP_SCALE=${CAP_SCALE:-1}      # every stage cap below is multiplied by this
PY=${PY:-python3}
DATA=${DATA_ROOT:-$($PY -c "from sgc.data.roots import resolve_root; print(resolve_root('breastmnist'))")}
THREADS=${THREADS:-4}
mkdir -p "$OUT"
log() { echo "[$(date +%T)] $*"; }
capped() {  # capped SECONDS command...: run it, stop it (TERM, then KILL 20 s later) at the cap
  local cap=$(( $1 * CAP_SCALE )); shift
  timeout -k 20 "$cap" "$@"
  local rc=$?
  if [ $rc -eq 124 ] || [ $rc -eq 143 ]; then log "   stopped at its cap of $cap s (rerun to resume)"; fi
  if [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ $rc -ne 143 ]; then log "   FAILED (exit $rc); going on"; fi
  return 0
}
common=(--device "$DEVICE" --dataset breastmnist --data-root "$DATA" --threads "$THREADS")

log "environment"
$PY -c "import torch, sgc; print('torch', torch.__version__, '| cuda', torch.version.cuda, torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else '')"

if [ ! -f "$OUT/run32/checkpoint.pt" ]; then
  log "1. train the 32 px score model ($STEPS steps, cap 80 s)"
  capped 80 $PY -m sgc.cli train --dataset breastmnist --data-root "$DATA" --run-dir "$OUT/run32" --arch unet \
      --set data_options.size=32 model.channels="$CHANNELS" 'model.channel_mults=[1,2,2]' model.emb_dim=128 \
            train.steps="$STEPS" train.batch_size="$BATCH" train.lr=1e-3 train.warmup=200 train.ema_decay=0.999 \
            train.hflip=true train.weighting=sigma2 train.checkpoint_every="$STEPS" train.log_every=500 \
      --device "$DEVICE"
fi

log "2. the GPU profile on the 32 px model (cap 180 s; its finished stages are skipped)"
capped 180 $PY benchmarks/gpu_profile.py --run-dir "$OUT/run32" --data-root "$DATA" --device "$DEVICE" \
    --out "$OUT" --released-json "$OUT/likelihood_32.json" --threads "$THREADS" $PROFILE

if [ ! -f "$OUT/classify_32.json" ] && [ -f "$OUT/run32/checkpoint.pt" ] && [ -f "$OUT/likelihood_32.json" ]; then
  log "3. every estimator on the test split at 32 px, eager and graphed (cap 60 s)"
  capped 60 $PY benchmarks/classify.py "${common[@]}" --run-dir "$OUT/run32" --arch unet --size 32 --images "$TEST" \
      --draws $DRAWS --repeats "$REPEATS" --batch-size 156 --compile graph --released-code "$OUT/likelihood_32.json" \
      --out "$OUT/classify_32.json"
fi

for S in $SIZES; do
  if [ "$S" -ge 256 ]; then caps=(25 35 30); batch=16; cls_batch=4; draws="16"
  else caps=(15 20 25); batch=64; cls_batch=16; draws="16 64"; fi
  if [ "$DEVICE" = cpu ]; then batch=16; draws="$DRAWS"; fi
  if [ ! -f "$OUT/run$S/checkpoint.pt" ]; then
    log "4. a $S px model, $SHORT steps at batch $batch (cap ${caps[0]} s)"
    capped "${caps[0]}" $PY -m sgc.cli train --dataset breastmnist --data-root "$DATA" --run-dir "$OUT/run$S" \
        --arch unet --set data_options.size="$S" model.channels="$CHANNELS" 'model.channel_mults=[1,2,2]' \
              model.emb_dim=128 train.steps="$SHORT" train.batch_size="$batch" train.lr=1e-3 train.warmup=50 \
              train.checkpoint_every="$SHORT" --device "$DEVICE"
  fi
  if [ ! -f "$OUT/run$S/checkpoint.pt" ]; then log "4. no $S px model: skipping its benchmarks"; continue; fi
  if [ ! -f "$OUT/likelihood_$S.json" ]; then
    log "4. released code path vs sgc at $S px (cap ${caps[1]} s)"
    capped "${caps[1]}" $PY benchmarks/likelihood.py "${common[@]}" --run-dir "$OUT/run$S" --arch unet --size "$S" \
        --images "$( [ "$IMAGES" -lt 4 ] && echo "$IMAGES" || echo 4 )" --classes 2 --repeats "$REPEATS" --rtol "$RTOL" --atol "$RTOL" --out "$OUT/likelihood_$S.json"
  fi
  if [ ! -f "$OUT/classify_$S.json" ] && [ -f "$OUT/likelihood_$S.json" ]; then
    log "4. estimators at $S px (cap ${caps[2]} s)"
    capped "${caps[2]}" $PY benchmarks/classify.py "${common[@]}" --run-dir "$OUT/run$S" --arch unet --size "$S" \
        --images "$( [ "$TEST" -gt 0 ] && echo "$TEST" || echo 32 )" --draws $draws --repeats "$REPEATS" --batch-size "$cls_batch" --compile graph --released-code "$OUT/likelihood_$S.json" \
        --out "$OUT/classify_$S.json"
  fi
done

log "summary"
$PY - "$OUT" $SIZES <<'EOF'
import json, sys
from pathlib import Path
out, sizes = Path(sys.argv[1]), ["32"] + sys.argv[2:]
ckpt = out / "run32" / "checkpoint.pt"
if ckpt.exists():
    import torch
    print(f"32 px model: {torch.load(ckpt, map_location='cpu', weights_only=True)['step']} training steps")
if (out / "gpu_profile.md").exists():
    print((out / "gpu_profile.md").read_text())
for s in sizes:
    try:
        lik = json.loads((out / f"likelihood_{s}.json").read_text())
        print(f"{s} px on {lik['device']}: exact ODE {lik['speedup']:.1f}x the released code path, "
              f"max difference {lik['max_diff_bits_per_dim']:.4f} bits/dim")
        cls = json.loads((out / f"classify_{s}.json").read_text())
        ref_auc = cls["rows"][0]["auc"]
        ok = [r for r in cls["rows"] if r["auc"] >= ref_auc - 1e-9]
        best = max(ok, key=lambda r: r["speedup_vs_released_code"])
        print(f"   fastest estimator with AUC >= the exact ODE's ({ref_auc:.3f}): {best['estimator']}, "
              f"{best['speedup_vs_released_code']:.0f}x the released code path, AUC {best['auc']:.3f}")
    except (OSError, KeyError, ValueError) as err:
        print(f"{s} px: incomplete ({type(err).__name__}: {err}); rerun this script to finish it")
EOF
