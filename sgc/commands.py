"""The ``sgc predict``, ``calibrate``, ``export`` and study sub-commands (registered by sgc.cli).

    sgc calibrate --run-dir R [--split val] [--estimator ode] [--false-alarm 0.05]
    sgc predict   --run-dir R  FILE|FOLDER|GLOB ... [--out predictions.csv] [--panels DIR]
    sgc predict   --export DIR  FILE ...
    sgc export    --run-dir R --out DIR
    sgc ood-study --run-dir R [--mini-mias-root D] [--cbis-ddsm-root D] [--tag ood_breastmnist]
    sgc counterfactual-study --run-dir R [--t-star 0.2 0.4 0.6] [--n 100] [--tag counterfactuals_digits]
    sgc evidence-study --run-dir R [--n 100] [--draws 64] [--tag evidence_digits]
"""
from __future__ import annotations

import sys

__all__ = ["COMMANDS", "add_parsers", "run"]

COMMANDS = ("predict", "calibrate", "export", "ood-study", "counterfactual-study", "evidence-study")


def _options_args(p, what: str) -> None:
    from .cli import _OldSection, _add_set
    _add_set(p, f"estimator_options ({what})", "estimator_options.n_draws=64")
    p.add_argument("--options", action=_OldSection, section="estimator_options")


def _estimator_args(p, default):
    from .cli import _add_device
    p.add_argument("--estimator", default=default, choices=["ode", "elbo"],
                   help="likelihood estimator" + (" (default: the OOD calibration's, else ode)" if default is None else ""))
    _options_args(p, "e.g. rtol=1e-5, n_probes=1 or n_draws=64")
    p.add_argument("--batch-size", type=int, default=64, help="images per chunk (one seed and one solve each)")
    p.add_argument("--seed", type=int, default=0, help="seeds the chunks exactly as sgc classify does")
    _add_device(p)


def add_parsers(command) -> None:
    """Add the sub-commands through ``command(name, help)`` of ``sgc.cli.build_parser``; each runs ``run``."""
    def sub_parser(name, help):
        p = command(name, help)
        p.set_defaults(run=run)
        return p

    p = sub_parser("predict", help="classify image files (DICOM, PNG/JPEG/TIFF, PGM, NPY; folders, globs) "
                                       "with a run folder or an export; OOD scores and flags")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run-dir", help="trained run folder")
    src.add_argument("--export", help="export folder written by sgc export")
    p.add_argument("files", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--out", default=None, help="predictions .csv or .json (default: CSV on stdout)")
    p.add_argument("--panels", default=None, help="folder for one PNG panel per image")
    p.add_argument("--prior", default=None, choices=["uniform", "empirical"], help="class prior (default uniform)")
    p.add_argument("--box", nargs=4, type=float, default=None, metavar=("ROW0", "COL0", "ROW1", "COL1"),
                   help="lesion box in source pixels (lesion-patch runs; applied to every file)")
    _estimator_args(p, None)

    p = sub_parser("calibrate", help="classify the validation split and set the OOD thresholds "
                                         "(ood_calibration.json in the run folder)")
    p.add_argument("--run-dir", required=True, help="trained run folder (the thresholds are written into it)")
    p.add_argument("--split", default="val", help="split whose images set the thresholds (never the test split)")
    p.add_argument("--limit", type=int, default=None, help="only the first N images of the split")
    p.add_argument("--false-alarm", type=float, default=0.05, help="fraction of in-distribution images flagged")
    p.add_argument("--compressor", default="png", choices=["png", "zlib", "lzma"],
                   help="codec of the complexity correction (bits of the compressed image)")
    p.add_argument("--default-score", default="complexity", choices=["complexity", "bpd"],
                   help="the score behind ood_flag")
    p.add_argument("--data-root", default=None, help="override the data folder recorded in the run")
    _estimator_args(p, "ode")

    p = sub_parser("export", help="weights (safetensors), config, preprocessing, OOD calibration, model card")
    p.add_argument("--run-dir", required=True, help="trained run folder to export")
    p.add_argument("--out", required=True, help="export folder")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the model card's intervals")

    p = sub_parser("ood-study", help="AUROC of the OOD scores: the test split against real and synthetic "
                                         "out-of-distribution sets (needs sgc calibrate first)")
    p.add_argument("--run-dir", required=True, help="calibrated run folder")
    p.add_argument("--mini-mias-root", default=None, help="folder with mini-MIAS .pgm films (patches are cut)")
    p.add_argument("--cbis-ddsm-root", default=None, help="folder with CBIS-DDSM .dcm files")
    p.add_argument("--data-root", default=None, help="override the data folder recorded in the run")
    p.add_argument("--n", type=int, default=64, help="images per synthetic set")
    _study_args(p, "ood")

    p = sub_parser("counterfactual-study", help="SDEdit counterfactuals of test images: flip rate and L2 per t*")
    p.add_argument("--run-dir", required=True, help="trained run folder")
    p.add_argument("--t-star", nargs="+", type=float, default=[0.2, 0.4, 0.6],
                   help="noise levels (diffusion times in (0, 1]) the images are pushed to before the reverse run")
    p.add_argument("--n", type=int, default=100, help="first N test images")
    p.add_argument("--sampler", default="sde", choices=["sde", "ode"], help="reverse-time sampler")
    p.add_argument("--sampler-steps", type=int, default=500, help="reverse steps over the whole [eps, T]")
    _options_args(p, "of the bound that classifies the counterfactuals; default n_draws=64")
    p.add_argument("--data-root", default=None, help="override the data folder recorded in the run")
    _study_args(p, "counterfactuals")

    p = sub_parser("evidence-study", help="evidence maps: randomisation check, deletion / insertion curves")
    p.add_argument("--run-dir", required=True, help="trained run folder")
    p.add_argument("--n", type=int, default=100, help="first N test images")
    p.add_argument("--draws", type=int, default=64, help="paired draws per evidence map")
    p.add_argument("--curve-points", type=int, default=16, help="points of the deletion / insertion curves")
    _options_args(p, "of the bound that scores p(a | x) on the curves; default n_draws=64")
    p.add_argument("--data-root", default=None, help="override the data folder recorded in the run")
    _study_args(p, "evidence")


def _study_args(p, tag):
    p.add_argument("--reports-dir", default="reports",
                   help="tables/<tag>.md, .csv and .json and figures/<tag>.png go here")
    p.add_argument("--tag", default=tag, help="file name of the table and figure")
    p.add_argument("--seed", type=int, default=0, help="seeds the image choice and the noise draws")


def run(args) -> int:
    """Execute one of COMMANDS; errors propagate to sgc.cli.main's handler."""
    from .cli import _settings
    from .config import OPEN
    tables, figures = (f"{getattr(args, 'reports_dir', 'reports')}/{sub}" for sub in ("tables", "figures"))
    if args.command == "export":
        from .export import export_run
        out = export_run(args.run_dir, args.out, overwrite=args.overwrite, n_boot=args.n_boot)
        print(f"exported {args.run_dir} -> {out}")
        return 0
    if args.command == "ood-study":
        from .ood_study import run_ood_study
        table = run_ood_study(args.run_dir, out_dir=tables, figures_dir=figures, tag=args.tag,
                              mini_mias_root=args.mini_mias_root, cbis_ddsm_root=args.cbis_ddsm_root,
                              data_root=args.data_root, n=args.n, seed=args.seed)
        print(f"{len(table)} rows -> {tables}/{args.tag}.md")
        return 0
    options = _settings(args, {"estimator_options": OPEN}).get("estimator_options")  # None: not given
    if args.command == "evidence-study":
        from .explain import run_evidence_study
        table = run_evidence_study(args.run_dir, out_dir=tables, figures_dir=figures, tag=args.tag,
                                   n=args.n, n_draws=args.draws, steps=args.curve_points, estimator_options=options,
                                   seed=args.seed, data_root=args.data_root)
        print(f"{len(table)} rows -> {tables}/{args.tag}.md")
        return 0
    if args.command == "counterfactual-study":
        from .counterfactual import run_counterfactual_study
        table = run_counterfactual_study(args.run_dir, out_dir=tables, figures_dir=figures, tag=args.tag,
                                         t_stars=args.t_star, n=args.n, sampler=args.sampler, steps=args.sampler_steps,
                                         estimator_options=options, seed=args.seed, data_root=args.data_root)
        print(f"{len(table)} rows -> {tables}/{args.tag}.md")
        return 0
    if args.command == "calibrate":
        from .predict import calibrate_run
        cal = calibrate_run(args.run_dir, split=args.split, estimator=args.estimator, estimator_options=options,
                            false_alarm=args.false_alarm, compressor=args.compressor, default=args.default_score,
                            batch_size=args.batch_size, seed=args.seed, limit=args.limit, data_root=args.data_root,
                            device=args.device)
        s = cal["scores"]
        print(f"OOD thresholds at {cal['false_alarm']:.0%} false alarms on {cal['split']} ({s['bpd']['n']} images): "
              f"bits/dim > {s['bpd']['threshold']:.4f}, complexity score > {s['complexity']['threshold']:.4f} "
              f"-> {args.run_dir}/ood_calibration.json")
        return 0
    from .classify import ScoreClassifier
    from .predict import predict_files, write_predictions
    clf = (ScoreClassifier.load(args.export, device=args.device, batch_size=args.batch_size) if args.export else
           ScoreClassifier.from_run(args.run_dir, device=args.device, batch_size=args.batch_size))
    boxes = None
    if args.box:
        from .data.files import expand_inputs
        boxes = {str(p): tuple(args.box) for p in expand_inputs(args.files)}
    frame = predict_files(clf, args.files, estimator=args.estimator, estimator_options=options, seed=args.seed,
                          prior=args.prior, boxes=boxes, panels_dir=args.panels)
    if args.out:
        write_predictions(frame, args.out)
    else:
        frame.to_csv(sys.stdout, index=False, float_format="%.10g")
    bad = frame[frame["error"] != ""]
    for _, row in bad.iterrows():
        print(f"sgc predict: {row['file']}: {row['error']}", file=sys.stderr)
    if args.out:
        print(f"{len(frame) - len(bad)} of {len(frame)} images predicted -> {args.out}", file=sys.stderr)
    return 2 if len(bad) == len(frame) else 0
