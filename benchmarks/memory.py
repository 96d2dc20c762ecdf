"""Peak GPU memory and images/s of training and of the likelihood solve at 64-384 px.

For each image side, a 3-channel paper-sized ScoreUNet (channels 32-64-128-256-512, two
classes) is measured in three modes:

* ``train``       one DSM step (bf16 autocast on CUDA, AdamW), plain;
* ``train+ckpt``  the same with gradient checkpointing (``ScoreUNet(checkpointing=True)``);
* ``likelihood``  ``class_log_likelihoods`` for both classes with a fixed-step Euler solve
                  (``--nfe`` evaluations, one forward + one VJP each); images/s is reported
                  for that NFE and extrapolated to the ~800 evaluations of dopri5 at 1e-5.

The batch size is chosen automatically: powers of two from 1 up to ``--max-batch`` while the
measured peak (``torch.cuda.max_memory_allocated``) stays within ``--budget-gb`` (default:
95 % of the card; pass 24 to see what a 24 GB card can do) and nothing runs out of memory.
Throughput is then timed at that batch. Prints a Markdown table and writes JSON.

    python benchmarks/memory.py                          # GPU: 64 128 256 384 px
    python benchmarks/memory.py --budget-gb 24           # what fits a 24 GB card
    python benchmarks/memory.py --device cpu             # tiny smoke run (16, 32 px), seconds

Without a GPU the script says so and runs the tiny CPU version (memory column: the process's
peak resident set size, not GPU memory).

    python benchmarks/memory.py --profiles               # the GPU profiles of sgc batch --profile

``--profiles`` prints, for every profile of notebooks/params (sgc.profiles), its network, batch and the
ESTIMATED peak GPU memory and time of its batch (sgc.budget: counted on the meta device, not
measured) and writes reports/benchmarks/profiles.json and profiles.md; on a GPU it also MEASURES the
peak memory and seconds of one training step of each profile's network at its batch (bf16 autocast,
AdamW), beside the estimate.
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _table import Column, format_table  # noqa: E402
from sgc.likelihood import class_log_likelihoods  # noqa: E402
from sgc.nets import ScoreUNet, count_parameters  # noqa: E402
from sgc.sde import VPSDE  # noqa: E402

MODES = ("train", "train+ckpt", "likelihood")


def _is_oom(err: BaseException) -> bool:
    # CUDA raises torch.cuda.OutOfMemoryError (a RuntimeError); the CPU allocator a RuntimeError
    msg = str(err).lower()
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in msg or "can't allocate" in msg


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_bytes(device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _reset(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def make_runner(mode, size, device, channels, mults, nfe):
    """A function batch -> None running one unit of work (a train step / a likelihood solve)."""
    model = ScoreUNet(num_classes=2, in_channels=3, image_size=size, channels=channels,
                      channel_mults=tuple(mults), checkpointing=(mode == "train+ckpt")).to(device)
    sde = VPSDE()
    gen = torch.Generator().manual_seed(0)
    if mode == "likelihood":
        model.eval()

        def run(batch):
            x = torch.rand(batch, 3, size, size, generator=gen).to(device)
            class_log_likelihoods(model, sde, x, method="euler", steps=nfe, levels=256, dequantize=False)
        return model, run

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def run(batch):
        x0 = (2 * torch.rand(batch, 3, size, size, generator=gen) - 1).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        t = (1e-5 + torch.rand(batch, generator=gen)).clamp(max=1.0).to(device)
        y = torch.randint(0, 2, (batch,), generator=gen).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            eps_hat = model(sde.perturb(x0, t, noise), t, y)
        loss = (eps_hat.float() - noise).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model, run


def measure(mode, size, device, *, channels, mults, nfe, budget, max_batch, repeats):
    """Largest power-of-two batch within the budget, its peak memory and throughput."""
    model, run = make_runner(mode, size, device, channels, mults, nfe)
    best = None
    batch = 1
    while batch <= max_batch:
        _reset(device)
        try:
            run(batch)
            _sync(device)
        except RuntimeError as err:
            if not _is_oom(err):
                raise
            err = None  # drop the traceback's tensors before freeing the cache
            _reset(device)
            break
        peak = _peak_bytes(device)
        if peak > budget:
            break
        best = (batch, peak)
        batch *= 2
    if best is None:
        return {"mode": mode, "size": size, "batch": 0, "note": "batch 1 does not fit the budget"}
    batch, peak = best
    _reset(device)
    run(batch)  # warm-up at the chosen batch (cuDNN autotuning, allocator)
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        run(batch)
    _sync(device)
    seconds = (time.perf_counter() - start) / repeats
    row = {"mode": mode, "size": size, "batch": batch, "peak_gib": _peak_bytes(device) / 2 ** 30,
           "seconds_per_call": seconds, "images_per_s": batch / seconds,
           "parameters": count_parameters(model)}
    if mode == "likelihood":
        row["nfe"] = nfe
        row["images_per_s_at_800_nfe"] = batch / (seconds * 800 / nfe)
    del model, run
    _reset(device)
    return row


def table(rows, device_name, budget_gib) -> str:
    def note(r):
        if not r.get("batch"):
            return r.get("note", "")
        return f"{r['images_per_s_at_800_nfe']:.3g} img/s at 800 NFE (dopri5 1e-5)" if r["mode"] == "likelihood" else ""
    shown = [r if r.get("batch") else {"size": r["size"], "mode": r["mode"], "note": r.get("note", "")} for r in rows]
    return format_table(shown, [Column("size", "side"), Column("mode", "mode"), Column("batch", "batch"),
                                Column("peak_gib", "peak GiB", ".2f"), Column("images_per_s", "images/s", ".3g"),
                                Column("", "note", note)], markdown=True,
                        title=f"Peak memory and throughput on {device_name} (budget {budget_gib:.0f} GiB; "
                              f"likelihood: both classes, fixed-step Euler)")


def measure_profile_step(model: dict, shape, batch: int, device) -> dict:
    """Peak GPU memory (GiB) and seconds of one training step of a profile's network (bf16 autocast, AdamW)."""
    from sgc.nets import build_model
    c, h, _ = shape
    net = build_model({**model, "num_classes": 2, "in_channels": c, "image_size": h}).to(device)
    opt, sde = torch.optim.AdamW(net.parameters(), lr=1e-4), VPSDE()
    gen = torch.Generator(device=device).manual_seed(0)

    def step():
        x0 = 2 * torch.rand(batch, *shape, generator=gen, device=device) - 1
        noise = torch.randn(x0.shape, generator=gen, device=device)
        t = torch.rand(batch, generator=gen, device=device).clamp(min=1e-5)
        y = torch.randint(0, 2, (batch,), generator=gen, device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = (net(sde.perturb(x0, t, noise), t, y).float() - noise).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _reset(device)
    try:
        step()
        _sync(device)
        start = time.perf_counter()
        for _ in range(3):
            step()
        _sync(device)
        return {"measured_gib": _peak_bytes(device) / 2 ** 30, "measured_seconds_per_step": (time.perf_counter() - start) / 3}
    except RuntimeError as err:
        if not _is_oom(err):
            raise
        return {"measured_gib": None, "note": "out of memory"}
    finally:
        del net, opt
        _reset(device)


def profiles_main(args, gpu: bool, device, name: str) -> int:
    """--profiles: every profile's estimate (and, on a GPU, one measured training step)."""
    from sgc import profiles
    rows = []
    for dataset, profile in profiles.list_profiles():
        if profile == profiles.CPU:
            continue
        result = profiles.check_profile(dataset, profile)
        est, params, about = result["estimate"], result["params"], result["about"]
        row = {"dataset": dataset, "profile": profile, "model": params["model"], "shape": list(est["shape"]),
               "parameters": est["parameters"], "batch": params["train"]["batch_size"],
               "steps": params["train"]["steps"], "estimator": params.get("estimator"),
               "estimator_options": params.get("estimator_options"),
               "estimated_gib": est["memory"], "estimated_peak_gib": est["gib"],
               "estimated_minutes": est["minutes"], "estimated_seconds": est["seconds"],
               "stated_minutes": about["minutes"], "stated_gib": about["gpu_memory_gib"]}
        if gpu:
            row.update(measure_profile_step(params["model"], est["shape"], row["batch"], device))
        rows.append(row)
        print(f"  {dataset:12s} {profile:8s} estimated {est['gib']:5.1f} GiB, {est['minutes']:6.1f} min"
              + (f"; measured training step {row.get('measured_gib') or float('nan'):.1f} GiB" if gpu else ""), flush=True)
    cols = [Column("dataset", "dataset"), Column("profile", "profile"), Column("", "side",
            lambda r: f"{r['shape'][1]} px x {r['shape'][0]}"), Column("parameters", "parameters", ",d"),
            Column("batch", "batch"), Column("steps", "steps", ",d"), Column("estimator", "estimator"),
            Column("", "training GiB (estimate)", lambda r: f"{r['estimated_gib']['training']:.1f}"),
            Column("estimated_peak_gib", "peak GiB (estimate)", ".1f"),
            Column("estimated_minutes", "batch minutes (estimate)", ".0f")]
    if gpu:
        cols += [Column("", "training step GiB (measured)",
                        lambda r: "" if r.get("measured_gib") is None else f"{r['measured_gib']:.1f}"),
                 Column("", "s per step (measured)", lambda r: f"{r.get('measured_seconds_per_step', float('nan')):.3f}")]
    text = format_table(rows, cols, markdown=True,
                        title=f"GPU profiles: estimates from sgc.budget (not measurements){'; measured on ' + name if gpu else ''}")
    print()
    print(text)
    out = Path(args.out if args.out != str(REPO / "reports" / "benchmarks" / "memory.json")
               else REPO / "reports" / "benchmarks" / "profiles.json")
    report = {"benchmark": "profiles", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "device": name, "measured": gpu, "torch": torch.__version__,
              "estimates": "sgc.budget: activations and operations counted on the meta device; time scaled from "
                           "H200 measurements of the 32 px BreastMNIST UNet (docs/measurements.md)",
              "rows": rows, "table": text}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(text + "\n")
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--sizes", type=int, nargs="*", default=None, help="image sides (GPU default 64 128 256 384)")
    ap.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES)
    ap.add_argument("--channels", type=int, default=None, help="first-level width (GPU default 32)")
    ap.add_argument("--mults", type=int, nargs="*", default=[1, 2, 4, 8, 16], help="width multipliers per level")
    ap.add_argument("--budget-gb", type=float, default=None, help="memory budget in GiB (default 95%% of the GPU)")
    ap.add_argument("--max-batch", type=int, default=None, help="largest batch tried (GPU default 512)")
    ap.add_argument("--nfe", type=int, default=None, help="Euler steps of the likelihood solve (GPU default 20)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per row (GPU default 5)")
    ap.add_argument("--out", default=str(REPO / "reports" / "benchmarks" / "memory.json"),
                    help="JSON file (--profiles: reports/benchmarks/profiles.json unless given)")
    ap.add_argument("--profiles", action="store_true", help="the GPU profiles: estimates (and measured training steps "
                                                           "on a GPU); see the module docstring")
    args = ap.parse_args(argv)
    if args.profiles:
        gpu = torch.cuda.is_available() and args.device != "cpu"
        device = torch.device(args.device or ("cuda" if gpu else "cpu"))
        name = torch.cuda.get_device_name(device) if gpu else "CPU (estimates only)"
        return profiles_main(args, gpu, device, name)

    gpu = torch.cuda.is_available() and args.device != "cpu"
    device = torch.device(args.device or ("cuda" if gpu else "cpu"))
    if gpu:
        props = torch.cuda.get_device_properties(device)
        name, total = props.name, props.total_memory
        defaults = dict(sizes=[64, 128, 256, 384], channels=32, max_batch=512, nfe=20, repeats=5)
        budget = args.budget_gb * 2 ** 30 if args.budget_gb else 0.95 * total
    else:
        print("no GPU: running the tiny CPU version (16 and 32 px, 8 channels, one thread); memory is the "
              "process's peak resident set size, not GPU memory")
        torch.set_num_threads(1)  # tiny ops: threads only add synchronisation (badly so on a shared CPU)
        name = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
        defaults = dict(sizes=[16, 32], channels=8, max_batch=4, nfe=2, repeats=1)
        budget = (args.budget_gb or 8) * 2 ** 30
    opts = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in defaults.items()}
    mults = args.mults if gpu or args.mults != [1, 2, 4, 8, 16] else [1, 2]
    rows, start = [], time.perf_counter()
    for size in opts["sizes"]:
        for mode in args.modes:
            row = measure(mode, size, device, channels=opts["channels"], mults=mults, nfe=opts["nfe"],
                          budget=budget, max_batch=opts["max_batch"], repeats=opts["repeats"])
            rows.append(row)
            print(f"  {size:4d} px {mode:11s} batch {row.get('batch', 0):4d}  "
                  f"{row.get('peak_gib', float('nan')):7.2f} GiB  {row.get('images_per_s', float('nan')):9.3g} img/s",
                  flush=True)
    text = table(rows, name, budget / 2 ** 30)
    print()
    print(text)
    report = {"benchmark": "memory", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "device": name, "gpu": gpu, "budget_gib": budget / 2 ** 30, "torch": torch.__version__,
              "model": {"channels": opts["channels"], "channel_mults": mults, "in_channels": 3, "num_classes": 2},
              "nfe": opts["nfe"], "rows": rows, "seconds": time.perf_counter() - start, "table": text}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
