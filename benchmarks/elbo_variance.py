"""Variance of the bound's class differences under each sampling scheme of t and noise.

For one trained run and a few images of one split (validation: this chooses the scheme), the
bound is estimated `--repeats` times with independent seeds at `--draws` draws per image x
class, for every scheme (t: stratified / sobol / iid; noise: iid / antithetic / sobol). The
spread over repeats of log p(x | 1) - log p(x | 0) (what ranks the images) is averaged over
images and reported as a ratio to the default scheme (stratified t, iid noise) of the same
run; equal cost per draw, so a ratio r means 1/r times the draws for the same precision.

    python benchmarks/elbo_variance.py --run-dir RUN --split val --images 24 --repeats 6 --draws 32
    python benchmarks/elbo_variance.py --smoke          # an untrained tiny model, seconds (tests)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))   # _command.py beside this script

from _command import public_command, where  # noqa: E402
from sgc.elbo import elbo_class_scores  # noqa: E402

SCHEMES = [("stratified", "iid"), ("iid", "iid"), ("sobol", "iid"), ("stratified", "antithetic"),
           ("sobol", "antithetic"), ("sobol", "sobol")]   # the first is the baseline


def _model(args):
    if args.smoke:
        from sgc.nets import build_model
        from sgc.sde import make_sde
        torch.manual_seed(0)
        model = build_model({"arch": "mlp", "num_classes": 2, "in_channels": 1, "image_size": 8, "hidden": 16,
                             "blocks": 1, "emb_dim": 8}).eval()
        with torch.no_grad():   # the output layer starts at zero: give the classes something to differ by
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        return model, make_sde("vp"), x, "smoke (random-weight MLP, random 8x8 images)"
    from sgc.data import load_dataset
    from sgc.data.roots import recorded_root
    from sgc.runs import load_run
    model, sde, config = load_run(args.run_dir)
    data = config["data"]
    root = args.data_root or recorded_root(data.get("root"), args.run_dir, data.get("root_base"))
    ds = load_dataset(data["dataset"], root=root, **data["options"])[args.split]
    return model, sde, torch.as_tensor(ds.images[:args.images]), f"{where(args.run_dir)} ({args.split}, {args.images} images)"


def measure(model, sde, x, draws, repeats, schemes=SCHEMES, batch=78):
    rows = []
    for ts, ns in schemes:
        diffs, start = [], time.perf_counter()
        for r in range(repeats):
            g = torch.Generator().manual_seed(1000 + r)
            lp = torch.cat([elbo_class_scores(model, sde, x[i:i + batch], n_draws=draws, t_sampling=ts,
                                              noise_sampling=ns, generator=g).logp for i in range(0, len(x), batch)])
            diffs.append((lp[:, 1] - lp[:, 0]).double().numpy())
        d = np.array(diffs)                      # (repeats, images)
        rows.append({"t_sampling": ts, "noise_sampling": ns, "var_diff": float(d.var(0, ddof=1).mean()),
                     "seconds": time.perf_counter() - start})
    for r in rows:
        r["ratio_to_default"] = r["var_diff"] / rows[0]["var_diff"]
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", default=None)
    ap.add_argument("--data-root", default=None, help="override the data folder recorded in the run")
    ap.add_argument("--split", default="val")
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--draws", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--smoke", action="store_true", help="untrained tiny model on random images")
    ap.add_argument("--out", default=None, help="JSON path (a .md beside it); default reports/benchmarks/elbo_variance.json "
                                                 "(--smoke: runs/benchmarks/elbo_variance_smoke.json, ignored by git)")
    args = ap.parse_args(argv)
    if not args.smoke and not args.run_dir:
        ap.error("--run-dir is required (or --smoke)")
    torch.set_num_threads(args.threads)
    if args.smoke:
        args.repeats, args.draws = 3, 8
    model, sde, x, what = _model(args)
    rows = measure(model, sde, x, args.draws, args.repeats)
    out = Path(args.out or REPO / ("runs/benchmarks/elbo_variance_smoke.json" if args.smoke
                                   else "reports/benchmarks/elbo_variance.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"what": what, "draws": args.draws, "repeats": args.repeats, "images": int(len(x)),
              "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "torch_threads": args.threads,
              "command": public_command(argv if argv is not None else sys.argv[1:], "benchmarks/elbo_variance.py"),
              "rows": rows}
    out.write_text(json.dumps(result, indent=2))
    lines = [f"# Variance of the bound's class difference: {what}", "",
             f"{args.draws} draws per image x class, {args.repeats} independent repeats; variance of "
             "log p(x|1) - log p(x|0) over repeats, mean over images (nats^2); ratio to the default scheme.", "",
             f"Command: `{result['command']}`", "",
             "| t sampling | noise sampling | variance | ratio to default | s |", "|---|---|---|---|---|"]
    lines += [f"| {r['t_sampling']} | {r['noise_sampling']} | {r['var_diff']:.4g} | {r['ratio_to_default']:.2f} | "
              f"{r['seconds']:.1f} |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
