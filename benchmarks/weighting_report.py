"""The per-noise-level weightings on trained score models: test AUC of every candidate, the one
chosen on validation against the likelihood-weighted bound (paired), and AUC against draws.

For each seed's run folder: per-draw evidence of the validation and test splits (read from the
run folder when ``sgc experiment --classifiers score_weighted`` already computed it with the same
options, else computed and kept there), the choice on validation (``sgc.weighting``), then every
candidate's test AUC with its 95 % bootstrap interval; the paired DeLong test of the chosen
weighting against the bound per seed, and a paired bootstrap of the mean difference over seeds;
the AUC of each weighting on the first M draws (Sobol t: a stratified sample of M), the chosen
weighting re-chosen on validation at each M, and adaptive elimination (AUC vs evaluations);
per-bin evidence (the AUC of each noise level alone) with the fitted logistic weights.

    python benchmarks/weighting_report.py --run-dir 'runs/models/breastmnist-unet16-s{seed}' --seeds 0 1 2 \\
        --elbo n_draws=256 t_sampling=sobol noise_sampling=antithetic batch_size=78 --tag breastmnist_weighting

The data are found as ``sgc classify`` finds them: ``--data-root``, else the folder the run
recorded, else sgc's data-root rule (``$SGC_DATA/medmnist``). ``--elbo`` and ``--weighted`` take
``KEY=VALUE`` items with YAML values (``sgc.config``): the bound's options and those of
``sgc.weighting.select_weighting``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))   # _command.py beside this script

from _command import public_command  # noqa: E402
from sgc.config import apply_overrides  # noqa: E402
from sgc.comparisons import auc_difference_over_seeds  # noqa: E402
from sgc.evidence import bin_edges_t, bin_means, eliminate_offline, weighted_scores  # noqa: E402
from sgc.metrics import (apply_prior, delong_test, empirical_prior, fit_temperature, mean_ci_over_seeds,  # noqa: E402
                         metrics_with_ci)
from sgc.weighting import SELECT_OPTIONS, apply_weighting, rank_auc, select_weighting  # noqa: E402

DRAWS = (8, 16, 32, 64, 128, 256)


def _posterior(name, s_val, s, y_val, prior):
    if name.startswith("logistic"):
        e = np.exp(s - s.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)
    return apply_prior(s, prior, fit_temperature(s_val, y_val, prior=prior))


def one_seed(run_dir, seed, args, elbo, wopts):
    from sgc.data import load_dataset
    from sgc.data.roots import recorded_root
    from sgc.score_runs import cached_evidence
    from sgc.runs import load_run
    model, sde, config = load_run(run_dir)
    data = config["data"]
    root = args.data_root or recorded_root(data.get("root"), run_dir, data.get("root_base"))
    splits = load_dataset(data["dataset"], root=root, **data["options"])
    val, test = splits["val"], splits["test"]
    prior = empirical_prior(splits["train"].labels, len(val.class_names))
    kw = dict(seed=seed, levels=data["levels"], dequantize=config["train"].get("dequantize", True), progress=True)
    eopts = {"t_sampling": "stratified", "noise_sampling": "iid", **elbo}
    ev_val = cached_evidence(model, sde, val, run_dir, eopts, **kw)
    ev_test = cached_evidence(model, sde, test, run_dir, eopts, **kw)
    rec = select_weighting(ev_val, sde, **wopts)
    rows, probs = [], {}
    for c in rec["cv"]:
        s_val, s_test = apply_weighting(rec, ev_val, sde, c["label"]), apply_weighting(rec, ev_test, sde, c["label"])
        p = _posterior(c["label"], s_val, s_test, val.labels, prior)
        probs[c["label"]] = p
        m = metrics_with_ci(test.labels, p, n_boot=args.n_boot, seed=seed)
        rows.append({"seed": seed, "weighting": c["label"], "chosen": c["label"] == rec["label"],
                     "cv_auc_val": c["cv_auc"], "auc_val_fitted": c["val_auc_fitted_on_val"],
                     "auc": m["auc"]["value"], "auc_lo": m["auc"]["lo"], "auc_hi": m["auc"]["hi"],
                     "accuracy": m["accuracy"]["value"], "balanced_accuracy": m["balanced_accuracy"]["value"],
                     "params": json.dumps({k: v for k, v in c["params"].items() if k != "converged"}, default=str)})
    curve = []
    for m_ in [d for d in DRAWS if d <= ev_test.values.shape[2]]:
        hv, ht = ev_val.head(m_), ev_test.head(m_)
        for name in ("likelihood", "uniform"):
            curve.append({"seed": seed, "draws": m_, "method": name, "evals_per_image": 2 * m_,
                          "auc": rank_auc(test.labels, weighted_scores(ht, sde, name))})
        if m_ >= wopts.get("n_bins", 16) * (2 if elbo.get("noise_sampling") == "antithetic" else 1):
            r = select_weighting(hv, sde, **wopts)
            curve.append({"seed": seed, "draws": m_, "method": "chosen on val", "evals_per_image": 2 * m_,
                          "auc": rank_auc(test.labels, apply_weighting(r, ht, sde)), "chosen": r["label"]})
    for z in (1.0, 2.0, 3.0):
        s, evals = eliminate_offline(ev_test, z=z, first_round=16)
        curve.append({"seed": seed, "draws": ev_test.values.shape[2], "method": f"likelihood + elimination z={z:g}",
                      "evals_per_image": float(np.mean(evals)), "auc": rank_auc(test.labels, s)})
    nb = rec["n_bins"]
    fv, ft = bin_means(ev_val, nb), bin_means(ev_test, nb)
    bins = [{"seed": seed, "bin": b, "auc_val": rank_auc(val.labels, -fv[:, :, b]),
             "auc_test": rank_auc(test.labels, -ft[:, :, b])} for b in range(nb)]
    best_lr = max((c for c in rec["cv"] if c["name"] == "logistic"), key=lambda c: c["cv_auc"])
    for b, beta in enumerate(best_lr["params"]["beta"]):
        bins[b]["logistic_beta"], bins[b]["logistic_label"] = beta, best_lr["label"]
    return rows, curve, bins, probs, test.labels, rec


def _figure(curve, bins, edges, path):
    import matplotlib.pyplot as plt
    from sgc.plots import save_figure, set_theme
    set_theme()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9.5, 3.4))
    c = curve.groupby(["method", "draws"], as_index=False).agg(auc=("auc", "mean"), evals=("evals_per_image", "mean"))
    for i, (name, g) in enumerate(c[~c["method"].str.contains("elimination")].groupby("method")):
        a.plot(g["evals"], g["auc"], marker="o", label=name, color=f"C{i}")
    e = c[c["method"].str.contains("elimination")]
    a.scatter(e["evals"], e["auc"], marker="*", s=80, color="k", label="likelihood + elimination (z = 1, 2, 3)")
    a.set(xscale="log", xlabel="network evaluations per image (2 classes)", ylabel="test AUC (mean over seeds)",
          title="AUC vs draws")
    import matplotlib.ticker as mticker
    ticks = [v for v in (16, 32, 64, 128, 256, 512, 1024) if c["evals"].min() * 0.8 <= v <= c["evals"].max() * 1.25]
    a.set_xticks(ticks)
    a.xaxis.set_major_formatter(mticker.ScalarFormatter())
    a.xaxis.set_minor_locator(mticker.NullLocator())
    a.legend(fontsize=6)
    mid = np.sqrt(edges[:-1] * edges[1:])
    g = bins.groupby("bin", as_index=False).mean(numeric_only=True)
    b.plot(mid, g["auc_val"], marker="o", label="AUC of one bin, val")
    b.plot(mid, g["auc_test"], marker="s", label="AUC of one bin, test")
    b.set(xscale="log", xlabel="diffusion time t (bin centre)", ylabel="AUC", title="evidence per noise level")
    b2 = b.twinx()
    b2.plot(mid, g["logistic_beta"], color="C3", linestyle="--", label="logistic weight (best CV lam)")
    b2.set_ylabel("weight (1 = bound)")
    h1, l1 = b.get_legend_handles_labels()
    h2, l2 = b2.get_legend_handles_labels()
    b.legend(h1 + h2, l1 + l2, fontsize=6)
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", required=True, help="run folder template with {seed}")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--elbo", nargs="*", default=["n_draws=256"], metavar="KEY=VALUE")
    ap.add_argument("--weighted", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--tag", default="weighting")
    ap.add_argument("--out-dir", default=str(REPO / "reports" / "tables"))
    ap.add_argument("--figures-dir", default=str(REPO / "reports" / "figures"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    elbo = apply_overrides({}, args.elbo)
    wopts = apply_overrides({"n_bins": 16, "folds": 5, "repeats": 10}, args.weighted, SELECT_OPTIONS,
                            what="--weighted option")
    rows, curve, bins, probs, ys, recs = [], [], [], [], None, []
    for seed in args.seeds:
        r, c, b, p, y, rec = one_seed(args.run_dir.format(seed=seed), seed, args, elbo, wopts)
        rows += r
        curve += c
        bins += b
        probs.append(p)
        ys, recs = y, recs + [rec]
    table, curve, bins = pd.DataFrame(rows), pd.DataFrame(curve), pd.DataFrame(bins)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / f"{args.tag}.csv", index=False)
    curve.to_csv(out / f"{args.tag}_curve.csv", index=False)
    bins.to_csv(out / f"{args.tag}_bins.csv", index=False)
    # the chosen weighting of each seed against the bound of the same seed, same draws
    y1 = (np.asarray(ys) == 1)
    chosen = np.array([p[rec["label"]][:, 1] for p, rec in zip(probs, recs)])
    bound = np.array([p["likelihood"][:, 1] for p in probs])
    boot = auc_difference_over_seeds(y1, chosen, bound, n_boot=2000)
    dl = [delong_test(y1.astype(int), c, b, positive=1)["p_value"] for c, b in zip(chosen, bound)]
    edges = bin_edges_t(__import__("sgc.sde", fromlist=["make_sde"]).make_sde("vp"), wopts["n_bins"])
    figs = _figure(curve, bins, edges, Path(args.figures_dir) / f"{args.tag}_auc_vs_draws")
    cmd = public_command(argv if argv is not None else sys.argv[1:], "benchmarks/weighting_report.py")
    lines = [f"# {args.tag}: weightings of the per-noise-level evidence, chosen on validation", "",
             f"Command: `{cmd}`", "",
             f"Seeds {args.seeds}; evidence options {elbo}; choice: {wopts} (cross-validated AUC on the validation "
             "split; the test split is scored once per candidate and never chosen on).", "",
             "| weighting | seeds chosen | CV AUC on val (mean) | test AUC, mean [95 % t over seeds] | per seed (bootstrap 95 %) | accuracy |",
             "|---|---|---|---|---|---|"]
    for name, g in table.groupby("weighting", sort=False):
        m, lo, hi = mean_ci_over_seeds(g["auc"], bounds=(0, 1))
        per = "; ".join(f"{r.auc:.3f} [{r.auc_lo:.3f}, {r.auc_hi:.3f}]" for r in g.itertuples())
        lines.append(f"| {name} | {int(g['chosen'].sum())} | {g['cv_auc_val'].mean():.3f} | {m:.3f} [{lo:.3f}, {hi:.3f}] | "
                     f"{per} | {g['accuracy'].mean():.3f} |")
    m_c, lo_c, hi_c = mean_ci_over_seeds([rank_auc(ys, np.c_[1 - c, c]) for c in chosen], bounds=(0, 1))
    lines += ["", f"**Chosen on validation** (per seed: {', '.join(r['label'] for r in recs)}): test AUC "
              f"{m_c:.3f} [{lo_c:.3f}, {hi_c:.3f}] vs the likelihood-weighted bound on the same draws: "
              f"ΔAUC {boot['diff']:+.3f} [{boot['lo']:+.3f}, {boot['hi']:+.3f}] (paired bootstrap over test images, "
              f"p = {boot['p_value']:.3g}); DeLong p per seed {' / '.join(f'{p:.3g}' for p in dl)}.", "",
              "## AUC against draws (mean over seeds; Sobol t, so the first M draws are a stratified sample)", "",
              "| method | draws | evaluations per image | test AUC |", "|---|---|---|---|"]
    c = curve.groupby(["method", "draws"], as_index=False).agg(auc=("auc", "mean"), evals=("evals_per_image", "mean"))
    lines += [f"| {r.method} | {r.draws} | {r.evals:.0f} | {r.auc:.3f} |" for r in c.itertuples()]
    lines += ["", f"Figure: `{Path(figs[0]).name}` (left: AUC vs evaluations; right: AUC of each noise-level bin alone "
              "on val and test, with the logistic weights of the best cross-validated ridge). Per-bin numbers: "
              f"`{args.tag}_bins.csv`; curve: `{args.tag}_curve.csv`; per seed and candidate: `{args.tag}.csv`."]
    (out / f"{args.tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
