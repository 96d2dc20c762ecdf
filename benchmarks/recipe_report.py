"""JSON + Markdown report of ``benchmarks/recipe_sweep.py``: every (recipe, seed) row, the
winner's mean over seeds, paired tests (winner vs base, winner vs the baselines' per-image
probabilities, seed by seed) and the verdict on issue 16's GPU target.

The Markdown is a function of the JSON alone (:func:`render_markdown`), so a report can be
rendered again without the run folders: ``python benchmarks/recipe_report.py <out>.json``.
The recorded command never names this machine's folders (``_command.public_command``): the data
folder becomes a placeholder, other paths are written relative to the repository.

Intervals over seeds are 95 % Student-t (``sgc.metrics.mean_ci_over_seeds``) and shown only
with at least two seeds; paired tests use ``sgc.comparisons.compare_by_seed`` (DeLong per seed,
paired bootstrap over test images pooled over seeds).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))   # _command.py beside this script
from _command import where as _where  # noqa: E402

METRICS = ("test_auc_weighted", "test_accuracy_weighted", "test_auc_bound", "test_accuracy_bound",
           "val_cv_auc_weighted", "val_auc_bound")


# how the Markdown explains the data folder's placeholder in the recorded command
PLACEHOLDER_NOTE = ("--data-root <folder with ...npz>", ": the folder holding the dataset's file; or leave "
                    "--data-root out and set SGC_DATA to the folder with one folder per source (medmnist/ ...), "
                    "sgc's data-root rule")


def _joined(per_seed, key, fmt=".3f") -> str:
    return " / ".join(format(x[key], fmt) for x in per_seed)


def _summary(rows: list[dict]) -> dict:
    """{recipe: {metric: [mean, lo, hi] (lo = hi = None with one seed), "seeds": [...]}}"""
    from sgc.metrics import mean_ci_over_seeds
    out = {}
    for name in sorted({r["recipe"] for r in rows}):
        g = [r for r in rows if r["recipe"] == name]
        out[name] = {"seeds": sorted(r["seed"] for r in g)}
        for m in METRICS:
            mean, lo, hi = mean_ci_over_seeds([r[m] for r in g], bounds=(0, 1))
            out[name][m] = [mean, lo, hi] if len(g) > 1 else [mean, None, None]
    return out


def _fmt(v) -> str:
    return f"{v[0]:.3f}" + (f" [{v[1]:.3f}, {v[2]:.3f}]" if v[1] is not None else " (1 seed)")


def _pairs(args, winner: str | None, rows: list[dict]) -> list[dict]:
    """Winner's weighted predictions against base (if another recipe) and every baseline group."""
    from sgc.comparisons import compare_by_seed, prediction_files
    if winner is None:
        return []
    mine = lambda name: {r["seed"]: Path(args.runs_dir) / f"{name}_s{r['seed']}" / "predictions_weighted.csv"  # noqa: E731
                         for r in rows if r["recipe"] == name}
    others = {} if winner == "base" else {"base recipe (weighted)": mine("base")}
    others.update(prediction_files(args.baseline_predictions))
    out = []
    for label, files in others.items():
        c = compare_by_seed(mine(winner), files)
        if c is not None:
            out.append({"a": f"{winner} (weighted)", "b": label, **c})
    return out


def _verdict(summary: dict, winner: str | None, pairs: list[dict], target: dict, published: dict,
             missing: list[str]) -> dict:
    """Whether the winner meets the target: mean of >= target seeds, above every baseline and the
    published ResNet-18 in AUC and accuracy."""
    if winner is None:
        return {"status": "pending", "why": "stage 1 (the choice) did not finish; rerun the command to resume"}
    s = summary[winner]
    if len(s["seeds"]) < target["seeds"]:
        return {"status": "pending", "why": f"the winner has {len(s['seeds'])} of {target['seeds']} seeds; " + (
            "rerun the command to resume" if missing else "this command asked for no more (--confirm-seeds)")}
    auc, acc = s["test_auc_weighted"][0], s["test_accuracy_weighted"][0]
    checks = {f"test AUC {auc:.3f} >= {target['auc']}": auc >= target["auc"],
              f"accuracy {acc:.3f} >= {target['accuracy']}": acc >= target["accuracy"],
              f"AUC above the published ResNet-18 ({published['auc']})": auc > published["auc"],
              f"accuracy above the published ResNet-18 ({published['accuracy']})": acc > published["accuracy"]}
    baselines = [p for p in pairs if p["b"] != "base recipe (weighted)"]
    if not baselines:
        checks["paired against the CNN baselines (--baseline-predictions)"] = False
    for p in baselines:
        checks[f"AUC above {p['b']} on the same images (mean diff {p['diff']:+.3f}, "
               f"bootstrap p = {p['p_bootstrap']:.3g})"] = p["diff"] > 0
    return {"status": "met" if all(checks.values()) else "not met", "checks": checks}


def write_report(args, rows, winner, tasks, start, *, command, target, published) -> dict:
    """Write ``<out>.json`` and ``<out>.md``; return the JSON record."""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = _summary(rows)
    pairs = _pairs(args, winner, rows)
    done = {(r["recipe"], r["seed"]) for r in rows}
    missing = [f"{n} s{s}" for n, s in tasks if (n, s) not in done]
    verdict = _verdict(summary, winner, pairs, target, published, missing)
    earlier = sorted(f"{r['recipe']} s{r['seed']}" for r in rows if
                     (Path(args.runs_dir) / f"{r['recipe']}_s{r['seed']}" / "result.json").stat().st_mtime < start)
    result = {"command": command, "runs_dir": _where(args.runs_dir), "winner": winner, "rows": rows,
              "summary": summary, "paired": pairs, "verdict": verdict, "target": target,
              "published_resnet18": published, "missing": missing, "finished_before_this_call": earlier,
              "seconds_wall": time.time() - start, "date": time.strftime("%Y-%m-%d", time.gmtime())}
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
    text = render_markdown(result)
    out.with_suffix(".md").write_text(text)
    print(text, end="")
    return result


def render_markdown(result: dict) -> str:
    """The Markdown report of a sweep's JSON record (see :func:`write_report`)."""
    command, rows, winner = result["command"], result["rows"], result["winner"]
    summary, pairs, verdict = result["summary"], result["paired"], result["verdict"]
    target, published = result["target"], result["published_resnet18"]
    earlier, missing = result["finished_before_this_call"], result["missing"]
    lines = ["# Training-recipe sweep of the score classifier (chosen on validation)", "",
             f"Command (from the repository root): `{command}`", "",
             *([f"`{PLACEHOLDER_NOTE[0]}`{PLACEHOLDER_NOTE[1]}", ""] if "--data-root" in command else []),
             f"Run folders: `{result['runs_dir']}/<recipe>_s<seed>` (result.json, per-image probabilities). "
             f"Bound: {', '.join(sorted({str(r['draws']) for r in rows})) or '?'} draws per image x class (Sobol t, "
             "antithetic noise), the same draws for the likelihood weighting ('bound') and the weighting chosen on "
             "validation ('weighted'). "
             "Validation decides everything: the recipe by the mean cross-validated AUC of its weighting on "
             "the validation images (column 'val CV AUC weighted'), the weighting per model likewise; the test "
             "split is scored once per model.", "",
             "| recipe | seed | device | steps | s train | val AUC bound | val CV AUC weighted | weighting | "
             "test AUC bound | test AUC weighted | test acc. bound | test acc. weighted |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["recipe"] != winner, r["recipe"], r["seed"])):
        lines.append(f"| {r['recipe']}{' (winner)' if r['recipe'] == winner else ''} | {r['seed']} | {r['device']} | "
                     f"{r['steps']} | {r['seconds_train']:.0f} | {r['val_auc_bound']:.3f} | "
                     f"{r['val_cv_auc_weighted']:.3f} | {r['weighting']} | {r['test_auc_bound']:.3f} | "
                     f"{r['test_auc_weighted']:.3f} | {r['test_accuracy_bound']:.3f} | "
                     f"{r['test_accuracy_weighted']:.3f} |")
    if summary:
        lines += ["", "Mean over seeds [95 % t-interval over seeds]:", "",
                  "| recipe | seeds | val CV AUC weighted | test AUC weighted | test acc. weighted | test AUC bound | "
                  "test acc. bound |", "|---|---|---|---|---|---|---|"]
        for name, s in sorted(summary.items(), key=lambda kv: (kv[0] != winner, kv[0])):
            lines.append(f"| {name} | {' '.join(map(str, s['seeds']))} | {_fmt(s['val_cv_auc_weighted'])} | "
                         f"{_fmt(s['test_auc_weighted'])} | {_fmt(s['test_accuracy_weighted'])} | "
                         f"{_fmt(s['test_auc_bound'])} | {_fmt(s['test_accuracy_bound'])} |")
    lines += ["", f"Winner on validation: **{winner or 'not chosen yet'}**."]
    if pairs:
        lines += ["", "Paired tests on the same test images (a = the winner's weighted probabilities):", "",
                  "| a | b | seeds | AUC a per seed | AUC b per seed | ΔAUC [95 %] | p (bootstrap) | p DeLong per seed |",
                  "|---|---|---|---|---|---|---|---|"]
        for p in pairs:
            per = p["per_seed"]
            lines.append(f"| {p['a']} | {p['b']} | {' '.join(map(str, p['seeds']))} | {_joined(per, 'auc_a')} | "
                         f"{_joined(per, 'auc_b')} | {p['diff']:+.3f} [{p['lo']:+.3f}, {p['hi']:+.3f}] | "
                         f"{p['p_bootstrap']:.3g} | {_joined(per, 'p_delong', '.3g')} |")
    lines += ["", f"Target (issue 16, GPU): test AUC >= {target['auc']} and accuracy >= {target['accuracy']}, mean of "
              f"{target['seeds']} seeds, above DenseNet-121 and the published ResNet-18 (AUC {published['auc']}, "
              f"accuracy {published['accuracy']}): **{verdict['status']}**"
              + (f" ({verdict['why']})" if "why" in verdict else "")]
    lines += [f"- {'yes' if ok else 'NO'}: {what}" for what, ok in verdict.get("checks", {}).items()]
    if earlier:
        lines += ["", f"Read from the run folders (finished before this call): {', '.join(earlier)}."]
    if missing:
        lines += ["", f"Not finished within the caps (rerun the same command to resume): {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    """Render ``<out>.md`` again from ``<out>.json`` (no training, no run folders needed)."""
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        raise SystemExit("usage: python benchmarks/recipe_report.py <out>.json [...]  (writes <out>.md beside it)")
    for name in paths:
        path = Path(name)
        if not path.is_file():
            raise SystemExit(f"{path}: no such file; give the JSON a recipe sweep wrote (--out <out> -> <out>.json)")
        path.with_suffix(".md").write_text(render_markdown(json.loads(path.read_text())))
        print(f"wrote {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
