"""Where sgc's GPU time goes, eager vs CUDA graphs, every row side by side in ONE run.

About 3 minutes on an H100 / H200 (planned minutes per stage, in the order they run: start 0.2,
train 0.5, eval 0.5, dpm2 0.1, bound 0.1, exact 1.6). Stages (each path warmed up first, paths
timed in turn, repeated; median and [min, max] reported):

  train  training steps/s of ``sgc.train`` (ScoreUNet 32 ch, mults 1,2,2, 32 px, batch 128, bf16
         autocast): compile=eager vs compile=graph (one CUDA graph per step); rates from the
         history's timestamps after the first log row (capture and warm-up excluded)
  eval   one ODE evaluation (forward + VJP) at 32 and 312 rows: ms per call and GPU kernel
         time and launches per call (torch.profiler), eager vs graph, + bf16, + channels_last
  exact  exact ODE (dopri5, rtol = atol = 1e-5) for 16 and 156 images x 2 classes: the paper's
         released code path (benchmarks/likelihood.py) vs sgc eager vs sgc graph (+ bf16,
         + channels_last); s per image x class; largest log-likelihood difference in bits/dim
         of every fast path vs sgc eager fp32
  dpm2   fixed-step dpm2, 32 evaluations, same images: eager vs graph (+ bf16); its speed-up
         over the released code path and its distance from the exact ODE come from the exact stage
  bound  Monte-Carlo bound, 16 draws, 156 images x 2 classes: eager vs graph (+ bf16)

Each stage writes ``profile_<stage>.json`` into --out (its error, if any, goes into that JSON and
the next stage runs); a stage whose JSON exists without an error is skipped, so a cut-off run
is resumed by running the same command again. At the end ``gpu_profile.json`` (all stages) and
``gpu_profile.md`` (the table) are written and the table is printed. With --released-json the
exact stage also writes the 16-image comparison in benchmarks/likelihood.py's format (what
benchmarks/classify.py --released-code reads).

    python benchmarks/gpu_profile.py --run-dir reports/benchmarks/gpu/run32 --data-root <medmnist folder>
    python benchmarks/gpu_profile.py --smoke --out runs/profile        # CPU, tiny sizes, < 1 min
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sgc import graphs  # noqa: E402
from sgc.elbo import elbo_class_scores  # noqa: E402
from sgc.likelihood import evaluators, log_likelihood  # noqa: E402
from sgc.nets import ScoreUNet  # noqa: E402
from sgc.sde import VPSDE  # noqa: E402
from sgc.train import train_score_model  # noqa: E402

STAGES = ("train", "eval", "dpm2", "bound", "exact")  # the long exact solves last: a cut-off run loses least


@dataclass
class Sizes:
    channels: int = 32                 # ScoreUNet width
    mults: tuple = (1, 2, 2)           # ScoreUNet channel multipliers
    emb_dim: int = 128
    size: int = 32                     # image side
    batch: int = 128                   # training batch
    train_steps: int = 250             # steps per timed training run
    log_every: int = 25                # history rows (rates are taken between them)
    train_repeats: int = 2
    eval_rows: tuple = (32, 312)       # rows of one ODE evaluation
    eval_calls: int = 40               # calls per timing
    eval_repeats: int = 3
    profile_calls: int = 10            # calls under torch.profiler
    exact_images: tuple = (16, 156)
    exact_repeats: tuple = (2, 2)      # sgc paths, per image count
    released_repeats: tuple = (1, 1)   # the released code path (slow: ~7 s and ~20 s on an H200), per image count
    rtol: float = 1e-5
    max_nfe: int = 1500                # an adaptive solve stops (error row) after this many evaluations
    dpm2_evals: int = 32
    fast_repeats: int = 5              # dpm2 and bound
    bound_images: int = 156
    bound_draws: int = 16
    model_steps: int = 1500            # training of the evaluated model when no --run-dir is given


SMOKE = Sizes(channels=4, mults=(1, 2), emb_dim=8, size=8, batch=8, train_steps=6, log_every=2, train_repeats=1,
              eval_rows=(2, 3), eval_calls=2, eval_repeats=2, profile_calls=2, exact_images=(1, 2),
              exact_repeats=(2, 1), released_repeats=(1, 1), rtol=1e-2, max_nfe=300, dpm2_evals=4, fast_repeats=2,
              bound_images=2, bound_draws=4, model_steps=0)


# ---------------------------------------------------------------------------- helpers
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device):
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def _stats(values):
    values = [float(v) for v in values]
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def _interleaved(paths: dict, repeats: dict, device):
    """({name: [seconds, ...]}, {name: last output}, {name: error}); path i of round r runs after
    path i-1 of round r (interleaved), ``repeats[name]`` rounds each. A path that raises is
    recorded with its error and not run again; the others go on."""
    times, outs, errors = {name: [] for name in paths}, {}, {}
    for r in range(max(repeats.values())):
        for name, fn in paths.items():
            if r < repeats[name] and name not in errors:
                try:
                    s, outs[name] = _timed(fn, device)
                except Exception as err:  # noqa: BLE001 - e.g. a bf16 solve that does not converge
                    errors[name] = f"{type(err).__name__}: {str(err)[:300]}"
                    print(f"    {name}: {errors[name]}", flush=True)
                    continue
                times[name].append(s)
    return times, outs, errors


def _kernel_stats(fn, calls: int, device):
    """(GPU kernel microseconds, kernel launches) per call of fn, from torch.profiler (every event
    that ran on the GPU: kernels, copies, fills); (None, None) on a CPU or if the profiler fails."""
    if device.type != "cuda":
        return None, None
    try:
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile
        _sync(device)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                fn()
            _sync(device)
        kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
        return sum(e.time_range.elapsed_us() for e in kernels) / calls, len(kernels) / calls
    except Exception as err:  # noqa: BLE001 - the timing rows stand without the kernel figures
        print(f"    torch.profiler failed: {type(err).__name__}: {err}", flush=True)
        return None, None


def _bpd_diff(a, b, dims):
    """Largest |log p difference| in bits/dim between two (N, ...) nats tensors."""
    return float((torch.as_tensor(a).double() - torch.as_tensor(b).double()).abs().max() / (dims * math.log(2)))


# ---------------------------------------------------------------------------- setup
class Context:
    """Device, sizes, data and the evaluated model, shared by the stages."""

    def __init__(self, args, sizes: Sizes):
        self.args, self.sizes = args, sizes
        self.device = torch.device(args.device)
        self.sde = VPSDE()
        self.out = Path(args.out)
        self.levels = 256
        self.train_images, self.train_labels, self.test_images, self.data = self._data()
        self._model = None

    def _data(self):
        s = self.sizes
        if self.args.data_root and not self.args.smoke:
            from sgc.data import load_dataset
            splits = load_dataset(self.args.dataset, root=self.args.data_root, size=s.size)
            self.levels = splits["train"].levels
            return (splits["train"].images, splits["train"].labels, splits["test"].images,
                    f"{self.args.dataset} {s.size} px")
        g = np.random.default_rng(0)  # timing only: random 8-bit images, two classes
        n_train, n_test = 4 * s.batch, max(max(s.exact_images), s.bound_images)
        imgs = g.integers(0, 256, (n_train + n_test, 1, s.size, s.size)).astype(np.float32) / 255
        labels = np.arange(n_train) % 2
        return imgs[:n_train], labels, imgs[n_train:], f"random 8-bit images {s.size} px"

    def new_unet(self, seed=0):
        torch.manual_seed(seed)
        s = self.sizes
        return ScoreUNet(num_classes=2, in_channels=1, image_size=s.size, channels=s.channels,
                         channel_mults=s.mults, emb_dim=s.emb_dim)

    def model(self):
        """The evaluated model (EMA weights, eval mode, on the device)."""
        if self._model is not None:
            return self._model
        run = Path(self.args.run_dir) if self.args.run_dir else self.out / "model"
        if (run / "checkpoint.pt").exists() and not self.args.smoke:  # smoke: sizes of its own
            from sgc.runs import load_run
            model, self.sde, config = load_run(run, self.device)
            self.levels = config.get("train", {}).get("levels", self.levels)
        elif self.sizes.model_steps > 0:
            cfg = dict(steps=self.sizes.model_steps, batch_size=self.sizes.batch, lr=1e-3, warmup=100, hflip=True,
                       levels=self.levels, checkpoint_every=self.sizes.model_steps)
            _, model, _ = train_score_model(self.new_unet(), self.sde, self.train_images, self.train_labels, cfg,
                                            run_dir=run, device=self.device, progress=False)
        else:  # smoke: an untrained UNet predicts zero noise; perturb it so the ODE has work to do
            model = self.new_unet()
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.01 * torch.randn_like(p))
        self._model = model.to(self.device).eval()
        return self._model


# ---------------------------------------------------------------------------- stages
def stage_train(ctx: Context) -> dict:
    s = ctx.sizes
    base = ctx.new_unet()
    engines = ctx.args.train_engines
    rates, ran = {e: [] for e in engines}, {}
    cfg = dict(steps=s.train_steps, batch_size=s.batch, lr=1e-3, warmup=50, log_every=s.log_every,
               checkpoint_every=10 ** 9, hflip=True, levels=ctx.levels, amp=True)
    for r in range(s.train_repeats):
        for engine in engines:
            _, _, hist = train_score_model(copy.deepcopy(base), ctx.sde, ctx.train_images, ctx.train_labels,
                                           dict(cfg, compile=engine, seed=r), device=ctx.device, progress=False)
            a, b = hist[0], hist[-1]  # from the first log row: capture, compilation and warm-up excluded
            rates[engine].append((b["step"] - a["step"]) / (b["seconds"] - a["seconds"]))
            ran[engine] = b["engine"]
    rows = [{"path": f"sgc train, compile={e}", "ran_as": ran[e], "steps_per_s": _stats(rates[e])} for e in engines]
    base_rate = rows[0]["steps_per_s"]["median"]
    for row in rows:
        row["speedup_vs_first"] = row["steps_per_s"]["median"] / base_rate
    return {"model": f"ScoreUNet {s.channels} ch, mults {list(s.mults)}, {s.size} px", "batch": s.batch,
            "steps_per_run": s.train_steps, "rows": rows}


def stage_eval(ctx: Context) -> dict:
    s, device, sde = ctx.sizes, ctx.device, ctx.sde
    model = ctx.model()
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    variants = {  # name: (model, compile, precision, channels_last)
        "eager": (model, None, None, False), "graph": (model, "graph", None, False),
        "graph + bf16": (model, "graph", "bf16", False), "graph + channels_last": (model_cl, "graph", None, True),
        "graph + bf16 + channels_last": (model_cl, "graph", "bf16", True)}
    rows = []
    for n in s.eval_rows:
        g = torch.Generator().manual_seed(n)
        z = torch.randn(n, 1, s.size, s.size, generator=g).to(device)
        y = torch.randint(0, 2, (n,), generator=g).to(device)
        probes = torch.randint(0, 2, (1, n, 1, s.size, s.size), generator=g).float().mul(2).sub(1).to(device)
        t = torch.tensor(0.5, device=device)
        calls, diffs = {}, {}
        for name, (m, comp, prec, cl) in variants.items():
            zz = z.contiguous(memory_format=torch.channels_last) if cl else z
            fn = evaluators(m, sde, y, probes, zz, comp, prec)[0]
            calls[name] = lambda f=fn, zz=zz: f(zz, t)
            for _ in range(3):  # warm-up (captures the graph); the output is compared with eager fp32
                out, div = calls[name]()
            ref = diffs.get("eager", {}).get("out", (out, div))
            diffs[name] = {"out": (out.float(), div.float()), "drift": float((out.float() - ref[0]).abs().max()),
                           "div": float((div.float() - ref[1]).abs().max())}
        paths = {name: (lambda c=c: [c() for _ in range(s.eval_calls)]) for name, c in calls.items()}
        times, _, errors = _interleaved(paths, {k: s.eval_repeats for k in paths}, device)
        base = _stats(times["eager"])["median"]
        for name, call in calls.items():
            if name in errors:
                rows.append({"rows": n, "path": name, "error": errors[name]})
                continue
            kernel_us, launches = _kernel_stats(call, s.profile_calls, device)
            ms = _stats([1e3 * v / s.eval_calls for v in times[name]])
            rows.append({"rows": n, "path": name, "ms_per_call": ms, "speedup_vs_eager": base / _stats(times[name])["median"],
                         "kernel_ms_per_call": None if kernel_us is None else kernel_us / 1e3,
                         "kernel_launches_per_call": launches, "max_abs_diff_drift_vs_eager": diffs[name]["drift"],
                         "max_abs_diff_divergence_vs_eager": diffs[name]["div"]})
    return {"rows": rows, "graphs_captured": all(gf.graphed for gf in graphs._CACHE.values())}


def _images(ctx: Context, n: int):
    """(x (n, C, H, W) dequantized with shared noise, Gaussian probe of its shape): the inputs of
    benchmarks/likelihood.py (test images in order)."""
    g = torch.Generator().manual_seed(0)
    x = torch.from_numpy(np.asarray(ctx.test_images[:n], dtype=np.float32))
    x = (torch.round(x * (ctx.levels - 1)) + torch.rand(x.shape, generator=g)) / ctx.levels
    return x, torch.randn(x.shape, generator=g)


def _sgc_paths(ctx, xs, ys, probes, method, opts, channels_last=True):
    """{name: solve(**overrides)} of sgc's log_likelihood: eager fp32, graph, graph + bf16, graph + channels_last."""
    model = ctx.model()
    variants = {"sgc eager": (model, None, None, False), "sgc graph": (model, "graph", None, False),
                "sgc graph + bf16": (model, "graph", "bf16", False)}
    if channels_last:
        variants["sgc graph + channels_last"] = (copy.deepcopy(model), "graph", None, True)
    return {name: (lambda m=m, c=c, p=p, cl=cl, **over: log_likelihood(
        m, ctx.sde, xs, ys, levels=ctx.levels, method=method, probes=probes, compile=c, precision=p,
        channels_last=cl, **{**opts, **over})) for name, (m, c, p, cl) in variants.items()}


def _rows(paths, times, outs, errors, n, k, dims, logp_of, ref_logp, base_name):
    """One row per path: seconds, s per image x class, NFE, bits/dim difference vs ``ref_logp``,
    speed-up vs the path ``base_name``."""
    rows = []
    base = _stats(times[base_name])["median"] if times.get(base_name) else None
    for name in paths:
        if name in errors:
            rows.append({"path": name, "error": errors[name]})
            continue
        sec = _stats(times[name])
        logp, nfe = logp_of(name, outs[name])
        rows.append({"path": name, "seconds": sec, "s_per_image_class": sec["median"] / (n * k), "nfe": nfe,
                     "max_diff_bpd_vs_sgc_eager": None if ref_logp is None else _bpd_diff(logp, ref_logp, dims),
                     "baseline": base_name, "speedup_vs_baseline": None if base is None else base / sec["median"]})
    return rows


def stage_exact(ctx: Context) -> dict:
    from likelihood import scipy_class  # the released code path: scipy RK45, host round trips, 2 forwards + 1 VJP
    s, device = ctx.sizes, ctx.device
    model = ctx.model()
    k = 2
    result = {"classes": k, "rtol": s.rtol, "atol": s.rtol, "max_nfe": s.max_nfe, "sizes": []}
    for n, reps, ref_reps in zip(s.exact_images, s.exact_repeats, s.released_repeats):
        x, probe = _images(ctx, n)
        dims = x[0].numel()
        xs, ys = x.repeat_interleave(k, 0), torch.arange(k).repeat(n)
        probes = probe.repeat_interleave(k, 0)[None]
        sgc = _sgc_paths(ctx, xs, ys, probes, "dopri5", dict(rtol=s.rtol, atol=s.rtol, max_nfe=s.max_nfe))

        def released(rtol=s.rtol):
            lps, nfes = zip(*[scipy_class(model, ctx.sde, x, c, probe, rtol, rtol) for c in range(k)])
            return torch.stack(lps, 1).reshape(-1), int(np.mean(nfes))

        released(1e-2)  # warm-up: one loose solve per class
        for fn in sgc.values():  # warm-up at the same shapes: captures every graph
            fn(rtol=1e-2, atol=1e-2)
        paths = {"released code path": released, **sgc}
        times, outs, errors = _interleaved(paths, {name: (ref_reps if name == "released code path" else reps)
                                                   for name in paths}, device)
        eager = outs["sgc eager"].logp.reshape(-1) if "sgc eager" in outs else None

        def logp_of(name, out):
            return out if name == "released code path" else (out.logp.reshape(-1), out.nfe)

        rows = _rows(paths, times, outs, errors, n, k, dims, logp_of, eager, "released code path")
        rel = outs.get("released code path", (None,))[0]
        for row in rows:
            if "error" not in row and rel is not None:
                row["max_diff_bpd_vs_released"] = _bpd_diff(logp_of(row["path"], outs[row["path"]])[0], rel, dims)
        result["sizes"].append({"images": n, "rows": rows, "sgc_eager_logp": None if eager is None else eager.tolist()})
    return result


def write_released_json(exact: dict, path) -> None:
    """The exact stage's first (16-image) comparison in benchmarks/likelihood.py's format, which
    benchmarks/classify.py --released-code reads; written from the stage's JSON, so also after a resume."""
    size = exact["sizes"][0]
    n, k = size["images"], exact["classes"]
    by = {r["path"]: r for r in size["rows"] if "error" not in r}
    ref, eager = by["released code path"], by["sgc eager"]
    fast = by.get("sgc graph", eager)
    out = {"benchmark": "likelihood", "source": "benchmarks/gpu_profile.py (stage exact)",
           "date": exact["date"], "device": exact["device"], "torch": exact["torch"],
           "images": n, "classes": k, "rtol": exact["rtol"], "atol": exact["atol"],
           "rows": [{"path": "reference (scipy RK45, per class, host copies, 2 fwd + 1 VJP)",
                     "s_per_image_class": ref["s_per_image_class"], "nfe": ref["nfe"],
                     "seconds": ref["seconds"]["median"]},
                    {"path": "sgc (torchdiffeq dopri5, classes batched, 1 fwd + 1 VJP), eager",
                     "s_per_image_class": eager["s_per_image_class"], "nfe": eager["nfe"],
                     "seconds": eager["seconds"]["median"]},
                    {"path": f"{fast['path']} (compile=graph: a CUDA graph of each evaluation)",
                     "s_per_image_class": fast["s_per_image_class"], "nfe": fast["nfe"],
                     "seconds": fast["seconds"]["median"]}],
           "speedup": ref["seconds"]["median"] / fast["seconds"]["median"],
           "speedup_eager": ref["seconds"]["median"] / eager["seconds"]["median"],
           "max_diff_bits_per_dim": max(eager["max_diff_bpd_vs_released"], fast["max_diff_bpd_vs_released"])}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))


def stage_dpm2(ctx: Context) -> dict:
    s, device = ctx.sizes, ctx.device
    k = 2
    result = {"nfe_budget": s.dpm2_evals, "sizes": []}
    for n in s.exact_images:
        x, probe = _images(ctx, n)
        dims = x[0].numel()
        xs, ys = x.repeat_interleave(k, 0), torch.arange(k).repeat(n)
        probes = probe.repeat_interleave(k, 0)[None]
        paths = _sgc_paths(ctx, xs, ys, probes, "dpm2", dict(nfe_budget=s.dpm2_evals), channels_last=False)
        for fn in paths.values():
            fn()
        times, outs, errors = _interleaved(paths, {name: s.fast_repeats for name in paths}, device)
        eager = outs["sgc eager"].logp.reshape(-1) if "sgc eager" in outs else None
        rows = _rows(paths, times, outs, errors, n, k, dims, lambda name, o: (o.logp.reshape(-1), o.nfe), eager,
                     "sgc eager")
        for row in rows:
            if "error" not in row:  # for the comparison with the exact stage (``cross_stage``)
                row["logp"] = outs[row["path"]].logp.reshape(-1).tolist()
            row["path"] = row["path"].replace("sgc", "sgc dpm2")
        result["sizes"].append({"images": n, "dims": dims, "rows": rows})
    return result


def cross_stage(results: dict) -> None:
    """dpm2 rows against the exact stage (whichever ran first): speed-up over the released code
    path at the same images, and the bits/dim distance from the exact ODE (sgc eager fp32)."""
    exact, dpm2 = results.get("exact") or {}, results.get("dpm2") or {}
    for size in dpm2.get("sizes", []):
        ex = next((e for e in exact.get("sizes", []) if e["images"] == size["images"]), None)
        if ex is None:
            continue
        released = next((r for r in ex["rows"] if r["path"] == "released code path" and "error" not in r), None)
        for row in size["rows"]:
            if "error" in row:
                continue
            if released is not None:
                row["speedup_vs_released"] = released["seconds"]["median"] / row["seconds"]["median"]
            if ex.get("sgc_eager_logp") is not None and "logp" in row:
                row["max_diff_bpd_vs_exact_eager"] = _bpd_diff(row["logp"], ex["sgc_eager_logp"], size["dims"])


def stage_bound(ctx: Context) -> dict:
    s, device = ctx.sizes, ctx.device
    model = ctx.model()
    n = min(s.bound_images, len(ctx.test_images))
    x = torch.from_numpy(np.asarray(ctx.test_images[:n], dtype=np.float32))
    dims = x[0].numel()
    variants = {"bound eager": (None, None), "bound graph": ("graph", None), "bound graph + bf16": ("graph", "bf16")}
    paths = {name: (lambda c=c, a=a: elbo_class_scores(model, ctx.sde, x, n_draws=s.bound_draws, levels=ctx.levels,
                                                        dequantize=True, compile=c, autocast=a, max_batch=4096,
                                                        generator=torch.Generator().manual_seed(0)))
             for name, (c, a) in variants.items()}
    for fn in paths.values():
        fn()
    times, outs, errors = _interleaved(paths, {name: s.fast_repeats for name in paths}, device)
    eager = outs["bound eager"].logp.reshape(-1) if "bound eager" in outs else None
    rows = _rows(paths, times, outs, errors, n, 2, dims, lambda name, o: (o.logp.reshape(-1), o.nfe), eager,
                 "bound eager")
    return {"images": n, "draws": s.bound_draws, "rows": rows}


# ---------------------------------------------------------------------------- driver
def _device_name(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")


def _load_stage(out: Path, stage: str):
    path = out / f"profile_{stage}.json"
    return json.loads(path.read_text()) if path.exists() else None


def run_stage(ctx: Context, stage: str) -> dict:
    done = _load_stage(ctx.out, stage)
    if done is not None and "error" not in done:
        print(f"[{stage}] done before ({ctx.out / f'profile_{stage}.json'}); skipped", flush=True)
        return done
    print(f"[{stage}] running", flush=True)
    start = time.perf_counter()
    try:
        result = globals()[f"stage_{stage}"](ctx)
    except Exception as err:  # noqa: BLE001 - write the error, go on with the next stage
        result = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-4000:]}
        print(f"[{stage}] FAILED: {result['error']}", flush=True)
    result = {"stage": stage, "device": _device_name(ctx.device), "torch": torch.__version__,
              "cuda": torch.version.cuda, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "data": ctx.data, "settings": asdict(ctx.sizes), "stage_seconds": time.perf_counter() - start, **result}
    tmp = ctx.out / f"profile_{stage}.json.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, ctx.out / f"profile_{stage}.json")
    print(f"[{stage}] {result['stage_seconds']:.0f} s", flush=True)
    return result


def _fmt(stat, scale=1.0, unit=""):
    return f"{stat['median'] * scale:.3g}{unit} [{stat['min'] * scale:.3g}, {stat['max'] * scale:.3g}]"


def _x(v, what):
    return "" if v is None else f"{v:.2f}x vs {what}"


def _d(v):
    return "" if v is None else f"{v:.4f}"


def table(results: dict) -> str:
    """The Markdown table of every stage's rows (times: median [min, max] over the repeats)."""
    lines = ["| stage | size | path | time, median [min, max] | speed-up | max Δ bits/dim vs sgc eager fp32 | note |",
             "| --- | --- | --- | --- | --- | --- | --- |"]

    def failed(stage, size, row):
        lines.append(f"| {stage} | {size} | {row['path']} | FAILED | | | {row['error'][:160]} |")

    for stage in ("train", "eval", "exact", "dpm2", "bound"):
        r = results.get(stage)
        if r is None:
            continue
        if "error" in r:
            lines.append(f"| {stage} | | | FAILED | | | {r['error'][:160]} |")
            continue
        if stage == "train":
            for row in r["rows"]:
                lines.append(f"| train | batch {r['batch']} | {row['path']} (ran as {row['ran_as']}) | "
                             f"{_fmt(row['steps_per_s'])} steps/s | {_x(row['speedup_vs_first'], 'the first')} | | |")
        elif stage == "eval":
            for row in r["rows"]:
                size = f"{row['rows']} rows"
                if "error" in row:
                    failed("ODE evaluation", size, row)
                    continue
                k = "" if row["kernel_ms_per_call"] is None else \
                    f"GPU kernels {row['kernel_ms_per_call']:.2f} ms in {row['kernel_launches_per_call']:.0f} launches; "
                lines.append(f"| ODE evaluation | {size} | {row['path']} | {_fmt(row['ms_per_call'], unit=' ms')} | "
                             f"{_x(row['speedup_vs_eager'], 'eager')} | | {k}max abs diff of the drift "
                             f"{row['max_abs_diff_drift_vs_eager']:.1e} |")
        else:
            label = {"exact": "exact ODE", "dpm2": f"dpm2, {r.get('nfe_budget')} evals",
                     "bound": f"bound, {r.get('draws')} draws"}[stage]
            sizes = r["sizes"] if "sizes" in r else [{"images": r["images"], "rows": r["rows"]}]
            for size in sizes:
                where = f"{size['images']} images x 2"
                for row in size["rows"]:
                    if "error" in row:
                        failed(label, where, row)
                        continue
                    speed = _x(row["speedup_vs_baseline"], row["baseline"])
                    if "speedup_vs_released" in row:
                        speed += f"; {_x(row['speedup_vs_released'], 'released code path')}"
                    note = f"NFE {row['nfe']}" if stage != "bound" else ""
                    if "max_diff_bpd_vs_exact_eager" in row:
                        note += f"; {row['max_diff_bpd_vs_exact_eager']:.4f} bits/dim from the exact ODE"
                    lines.append(f"| {label} | {where} | {row['path']} | {_fmt(row['seconds'], unit=' s')} | {speed} | "
                                 f"{_d(row['max_diff_bpd_vs_sgc_eager'])} | {note} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", default=None, help="trained 32 px run folder to evaluate (else one is trained "
                                                     "into OUT/model from --data-root, or random data)")
    ap.add_argument("--dataset", default="breastmnist")
    ap.add_argument("--data-root", default=None, help="folder with the dataset (else random images: timing only)")
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--out", default=str(REPO / "reports" / "benchmarks" / "gpu"))
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument("--train-engines", nargs="+", default=["eager", "graph"],
                    help="training engines compared (first = baseline); e.g. add reduce-overhead (compiles ~1 min)")
    ap.add_argument("--released-json", default=None, metavar="JSON",
                    help="also write the exact stage's 16-image comparison with the released code path in "
                         "benchmarks/likelihood.py's format (for classify.py --released-code)")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (< 1 min): checks the script")
    args = ap.parse_args(argv)
    if args.smoke:
        args.device = args.device or "cpu"
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(args, SMOKE if args.smoke else Sizes())
    print(f"gpu_profile: {_device_name(ctx.device)}, torch {torch.__version__}, data: {ctx.data}, out: {out}",
          flush=True)
    results = {stage: run_stage(ctx, stage) for stage in args.stages}
    cross_stage(results)
    if args.released_json and "error" not in results.get("exact", {"error": "not run"}):
        try:
            write_released_json(results["exact"], args.released_json)
        except (KeyError, IndexError) as err:  # a path of the 16-image comparison failed: nothing to write
            print(f"no {args.released_json}: the exact stage lacks {err}", flush=True)
    md = table(results)
    summary = {"benchmark": "gpu_profile", "device": _device_name(ctx.device), "torch": torch.__version__,
               "cuda": torch.version.cuda, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "command": "python benchmarks/gpu_profile.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "stages": results}
    (out / "gpu_profile.json").write_text(json.dumps(summary, indent=2))
    header = (f"GPU profile on {summary['device']} (torch {summary['torch']}, CUDA {summary['cuda']}), "
              f"{summary['date']}; `{summary['command']}`\n\n")
    (out / "gpu_profile.md").write_text(header + md + "\n")
    print("\n" + md)
    print(f"\nwrote {out / 'gpu_profile.json'} and {out / 'gpu_profile.md'}")
    return summary


if __name__ == "__main__":
    main()
