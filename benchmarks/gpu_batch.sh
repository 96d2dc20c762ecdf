#!/usr/bin/env bash
# The BreastMNIST notebooks with the GPU profile as ONE prepared call of at most 8 minutes on an H100 / H200:
#
#     SGC_DATA=<folder holding medmnist/breastmnist.npz> bash benchmarks/gpu_batch.sh
#
# It runs `sgc batch --dataset breastmnist --profile gpu` (notebooks/params/breastmnist.gpu.yaml) one
# notebook per stage into reports/runs/breastmnist-gpu/, adds the bound with 256 draws (sgc classify), and
# lets notebook 05 refresh reports/tables/results.md, comparison.md and the figures from every run folder
# of reports/runs. It writes reports/benchmarks/gpu_batch/gpu_batch.json and gpu_batch.md: each stage's
# status and seconds, the device, the AUCs and the must-show checks (<= 8 minutes, six notebooks rendered
# without error cells, AUC >= 0.88 on the official test split).
#
# stage (planned minutes on an H100/H200: the profile's estimate, `sgc profile --dataset breastmnist
# --profile gpu`, which assumes eager speed; hard cap in seconds; the whole call stops at 8 minutes)
# 0. environment (CUDA start)                                          0.05
# 1. 01 data exploration                                               0.25  cap  40
# 2. 02 training: 5,000 steps of the 32 px UNet, samples, EMA check    3.75  cap 270
# 3. 03 exact ODE likelihood of the 156 test images (dopri5 1e-5)      0.45  cap  60
# 4. 04 ablations (tolerances, probes, draws, budgets, fractions)      1.95  cap 150
# 5. the bound, 256 draws, on the test split (sgc classify)            0.05  cap  30
# 6. 06 beyond classification (OOD, evidence, counterfactuals)         0.45  cap  60
# 7. 05 paper figures: Figure 1 and the tables of every run            1.0   cap  90
#                                                          total planned ~7.9 min, capped at 8.0
# Resumable: a stage done before with the same parameters is skipped (sgc batch --resume, the bound's
# metrics file), so a call cut off by its cap is finished by running the same command again; training
# continues from its last checkpoint (every 1,000 steps). A stage that fails or hits its cap does not stop
# the others, except that nothing runs on a model whose training did not finish. 05 runs last so that its
# tables hold every result.
#
# STAGES="02" (names: 01 02 03 04 bound 06 05) runs only those stages, e.g. to train first.
# CPU check with tiny settings (a few minutes on 2 cores; writes only under SMOKE_DIR, never to reports/):
#     SGC_DATA=<data folder> bash benchmarks/gpu_batch.sh --smoke          # SMOKE_DIR: a new temporary folder
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
PY=${PY:-python3}
if [ "$SMOKE" = 1 ]; then
  ROOT=${SMOKE_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/sgc-gpu-batch-smoke.XXXXXX")}
  RUNS=$ROOT/runs; REPORTS=$ROOT/reports; OUT=$ROOT/benchmark
  BUDGET=${BUDGET:-1500}; SCALE=6; DRAWS=2
  # the tiny settings of the README test: each notebook's work at its smallest useful size, on the CPU
  TINY=(device=cpu cpu_threads=1 "train={steps: 20, batch_size: 16, warmup: 1, checkpoint_every: 20, log_every: 5}"
        "model={channels: 8, channel_mults: [1, 2], emb_dim: 16}" examples_per_class=1 preprocess_size=32
        samples_per_class=1 sampler_steps=2 ema_images=4 ema_draws=2 "estimator_options={method: euler, steps: 4}"
        n_boot=10 min_accuracy=0 min_auc=null min_ema_accuracy=null ablation_images=4 "tolerances=[0.1]"
        "probe_settings=[[rademacher, 1]]" probe_repeats=2 probe_rtol=0.1 "elbo_draws=[2]" "step_grid=[2]"
        "fractions=[1.0]" fraction_steps=2 ablation_draws=2 "experiment_fractions=[100]" "experiment_seeds=[0]"
        experiment_steps=2 experiment_draws=2 experiment_boot=10 min_bound_accuracy=null toy_points=300
        toy_steps=300 min_toy_agreement=0 "score_options={n_draws: 2}" ood_images=4 file_images=2 explain_images=2
        evidence_draws=2 deletion_images=2 deletion_steps=2 "t_stars=[0.5]" counterfactual_images=2
        counterfactual_steps=10 check_results=false)
  DEVICE=cpu
else
  RUNS=${RUNS:-reports/runs}; REPORTS=${REPORTS:-reports}; OUT=${OUT:-reports/benchmarks/gpu_batch}
  BUDGET=${BUDGET:-480}; SCALE=1; DRAWS=256; TINY=(); DEVICE=${DEVICE:-cuda}
fi
RUN=$RUNS/breastmnist-gpu
mkdir -p "$OUT" "$RUNS"
LOG=$OUT/stages.tsv                      # one line per stage and call: stage, status, seconds, cap, call
touch "$LOG"
STAGE_LOG=$(mktemp)                      # one stage's output, to tell "skipped: done before" from work
trap 'rm -f "$STAGE_LOG"' EXIT
START=$(date +%s)
CALL=$(date -u +%Y-%m-%dT%H:%M:%SZ)
log() { echo "[$(date +%T)] $*"; }
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$CALL" >> "$LOG"; }
STAGES=" ${STAGES:-01 02 03 04 bound 06 05} "
stage() {  # stage NAME CAP command...: run it under min(CAP, time left), record status and seconds
  local name=$1 cap=$(( $2 * SCALE )); shift 2
  case "$STAGES" in *" ${name%% *} "*) ;; *) return ;; esac       # not selected (STAGES): no record
  local left=$(( START + BUDGET - $(date +%s) ))
  [ "$left" -lt "$cap" ] && cap=$left
  if [ "$cap" -lt 5 ]; then log "$name: no time left in this call (rerun to continue)"; record "$name" "not run" 0 "$cap"; return; fi
  log "$name (cap $cap s)"
  local t0; t0=$(date +%s)
  timeout -k 20 "$cap" "$@" 2>&1 | tee "$STAGE_LOG"
  local rc=${PIPESTATUS[0]}
  local seconds=$(( $(date +%s) - t0 ))
  if [ $rc -eq 0 ] && grep -q "nothing to run" "$STAGE_LOG"; then record "$name" "done before" "$seconds" "$cap"
  elif [ $rc -eq 0 ]; then record "$name" done "$seconds" "$cap"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ] || [ $rc -eq 143 ]; then
    log "   stopped at its cap of $cap s (rerun to resume)"; record "$name" "stopped at cap" "$seconds" "$cap"
  else log "   FAILED (exit $rc); going on"; record "$name" "failed (exit $rc)" "$seconds" "$cap"; fi
}
done_before() { [ -f "$RUN/batch.json" ] && grep -q "\"$1" "$RUN/batch.json" && [ -f "$RUN/$1.ipynb" ]; }
# one notebook with the GPU profile (skipped by --resume when done before with the same parameters)
batch=($PY -m sgc batch --dataset breastmnist --profile gpu --runs-dir "$RUNS" --reports-dir "$REPORTS" --resume)
tiny() {  # tiny NN: the -p items of TINY that notebook NN declares (sgc batch refuses the others)
  [ ${#TINY[@]} -eq 0 ] && return
  printf '%s\0' -p
  $PY -c "import sys; from sgc import batch
declared = batch.notebook_parameters(batch.select_notebooks([sys.argv[1]])[0])
sys.stdout.write(''.join(item + chr(0) for item in sys.argv[2:] if item.split('=', 1)[0] in declared))" "$1" "${TINY[@]}"
}
notebook() {  # notebook NN: the sgc batch command of that notebook
  local extra=(); mapfile -d '' extra < <(tiny "$1")
  cmd=("${batch[@]}" --notebooks "$1" "${extra[@]}")
}

log "0. environment"
$PY -c "import torch, sgc; print('torch', torch.__version__, '| cuda', torch.version.cuda, torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else '')" | tee "$OUT/environment.txt"

notebook 01; stage "01 data exploration" 40 "${cmd[@]}"
notebook 02; stage "02 training" 270 "${cmd[@]}"
if done_before 02_score_model_training; then
  notebook 03; stage "03 exact ODE likelihood" 60 "${cmd[@]}"
  notebook 04; stage "04 ablations" 150 "${cmd[@]}"
  if [ ! -f "$RUN/metrics_test_elbo.json" ]; then
    stage "bound ($DRAWS draws)" 30 $PY -m sgc classify --run-dir "$RUN" --estimator elbo --batch-size 156 \
        --device "$DEVICE" --set estimator_options.n_draws="$DRAWS"
  else case "$STAGES" in *" bound "*) record "bound ($DRAWS draws)" "done before" 0 0 ;; esac; fi
  notebook 06; stage "06 beyond classification" 60 "${cmd[@]}"
  notebook 05; stage "05 paper figures and tables" 90 "${cmd[@]}"
else
  log "02 did not finish: the later stages need its model (rerun to continue training from its checkpoint)"
fi

WALL=$(( $(date +%s) - START ))
log "summary (this call: $WALL s)"
$PY - "$OUT" "$RUN" "$REPORTS" "$BUDGET" "$SMOKE" "$WALL" <<'EOF'
import csv, json, sys
from datetime import datetime, timezone
from pathlib import Path
out, run, reports, budget, smoke = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
wall = int(sys.argv[6])
rows = list(csv.reader((out / "stages.tsv").open(), delimiter="\t"))
calls = sorted({r[4] for r in rows}) or [datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")]
latest = {}
for name, status, seconds, cap, call in rows:          # per stage: the last call's status, the seconds of its work
    rec = latest.setdefault(name, {"stage": name, "seconds": None, "done_in_call": None})
    rec.update(status=status, cap=int(cap), call=call)
    if status not in ("done before", "not run"):
        rec.update(seconds=int(seconds), done_in_call=call if status == "done" else None)
notebooks = sorted(p.name for p in run.glob("[0-9][0-9]_*.ipynb"))
rendered = [n for n in notebooks if ".running" not in n and ".failed" not in n]
errors = []
for name in rendered:
    nb = json.loads((run / name).read_text())
    errors += [name for c in nb["cells"] if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
metrics = {}
for est in ("ode", "elbo"):
    path = run / f"metrics_test_{est}.json"
    if path.exists():
        m = json.loads(path.read_text())
        metrics[est] = {k: m.get(k) for k in ("n", "accuracy", "balanced_accuracy", "auc_macro_ovr", "mean_nfe",
                                               "seconds_classify", "train_steps", "device")}
state = json.loads((run / "batch.json").read_text()) if (run / "batch.json").exists() else {"notebooks": {}}
checks = {
    "this call's wall time within the budget (s)": [wall, wall <= budget],
    "six notebooks rendered": [len(rendered), len(rendered) == 6 and len(rendered) == len(notebooks)],
    "no error cells": [sorted(set(errors)), not errors],
    "ODE AUC >= 0.88": [metrics.get("ode", {}).get("auc_macro_ovr"), (metrics.get("ode", {}).get("auc_macro_ovr") or 0) >= 0.88],
    "bound AUC >= 0.88": [metrics.get("elbo", {}).get("auc_macro_ovr"), (metrics.get("elbo", {}).get("auc_macro_ovr") or 0) >= 0.88],
}
env = (out / "environment.txt").read_text().strip() if (out / "environment.txt").exists() else ""
report = {"benchmark": "gpu_batch", "smoke": smoke, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
          "environment": env, "run_folder": run.name, "calls": calls, "wall_seconds_last_call": wall,
          "budget_seconds": budget, "stages": list(latest.values()),
          "notebook_seconds": {k: v.get("seconds") for k, v in state["notebooks"].items()},
          "metrics": metrics, "must_show": checks, "tables": str(Path(reports, "tables", "results.md"))}
(out / "gpu_batch.json").write_text(json.dumps(report, indent=1))
lines = [f"# BreastMNIST GPU batch{' (CPU smoke run, tiny settings: not a result)' if smoke else ''}", "",
         f"{env} — {len(calls)} call(s), the last {calls[-1]} ({wall} s); run folder `{run.name}`", "",
         "| stage | this call | seconds of its last run | cap (s) |", "|---|---|---|---|"]
lines += [f"| {s['stage']} | {s['status']} | {'' if s['seconds'] is None else s['seconds']} | {s['cap']} |"
          for s in latest.values()]
lines += ["", "| estimator | n | accuracy | balanced accuracy | AUC | NFE / draws | s | device |", "|---|---|---|---|---|---|---|---|"]
lines += [f"| {e} | {m['n']} | {m['accuracy']:.3f} | {m['balanced_accuracy']:.3f} | {m['auc_macro_ovr']:.3f} | "
          f"{m['mean_nfe']:.0f} | {m['seconds_classify']:.1f} | {m['device']} |" for e, m in metrics.items()]
lines += ["", "| must show | value | ok |", "|---|---|---|"]
lines += [f"| {k} | {v[0]} | {'yes' if v[1] else 'NO'} |" for k, v in checks.items()]
(out / "gpu_batch.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
print(f"\nwrote {out / 'gpu_batch.json'} and {out / 'gpu_batch.md'}")
EOF
