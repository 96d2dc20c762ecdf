"""The ``sgc profile`` sub-command (registered by sgc.cli): the batch profiles of :mod:`sgc.profiles`.

    sgc profile                                              # every profile: network, batch, estimates
    sgc profile --check                                      # validate every profile (exit 2 naming problems)
    sgc profile --dataset vindr_mammo --profile gpu          # its settings and the estimate's terms
    sgc profile --dataset vindr_mammo --profile gpu --args train     # as sgc train arguments, one per line
    sgc profile --dataset mini_mias --profile gpu --cache    # load the data once: builds the cache
"""
from __future__ import annotations

from .errors import ConfigError
from .profiles import CPU, check_profile, classify_arguments, list_profiles, params_file, run_name, train_arguments

__all__ = ["add_parser"]


def add_parser(command) -> None:
    """Register ``sgc profile`` through ``command(name, help)`` of ``sgc.cli.build_parser``."""
    from .cli import _add_set
    p = command("profile", "the batch profiles: estimates, checks, training arguments, the data cache")
    p.add_argument("--dataset", default=None, help="one dataset (default: every profile)")
    p.add_argument("--profile", default=CPU, help="cpu (params/<dataset>.yaml) or e.g. gpu (<dataset>.gpu.yaml)")
    _add_set(p, "the notebooks' parameters, as for sgc batch", "data_options.missing=drop", "-p", "--set")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--check", action="store_true", help="validate (every profile without --dataset); exit 2 "
                                                           "naming each problem")
    what.add_argument("--args", choices=["train", "classify"], default=None,
                      help="print the profile's settings as sgc train arguments (data, network, SDE, training) or "
                           "sgc classify arguments (notebook 03's estimator), one per line")
    what.add_argument("--cache", action="store_true",
                      help="load the data once with the profile's loader options (builds the preprocessing cache)")
    p.add_argument("--data-root", default=None, metavar="DIR", help="the dataset's folder (default: the data-root "
                                                                     "rule, as sgc train --help says)")
    p.set_defaults(run=_profile_command)


def _profile_command(args) -> int:
    from .config import parse_overrides
    overrides = parse_overrides(args.set)
    if args.dataset is None:
        if args.args or args.cache:
            raise ConfigError("--args and --cache need --dataset (and --profile)")
        rows = []
        for dataset, profile in list_profiles():
            result = check_profile(dataset, profile, overrides=overrides)
            est, params = result["estimate"], result["params"]
            model, train = params.get("model") or {}, params.get("train") or {}
            rows.append(f"| {dataset} | {profile} | {model.get('arch', 'unet')} {model.get('channels', model.get('hidden', ''))}"
                        f" | {(params.get('data_options') or {}).get('size', '')} | {train.get('steps', '')} | "
                        f"{train.get('batch_size', '')} | {params.get('estimator', '')} | "
                        + (f"{est['minutes']:.0f} | {est['gib']:.1f} |" if est else "| |"))
        print("| dataset | profile | network | side | steps | batch | estimator | minutes (estimate) | "
              "GPU GiB (estimate) |\n|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows))
        if args.check:
            print(f"{len(rows)} profiles valid")
        return 0
    result = check_profile(args.dataset, args.profile, overrides=overrides)
    params = result["params"]
    if args.args:
        print("\n".join(train_arguments(params) if args.args == "train" else classify_arguments(params)))
    elif args.cache:
        import time
        from .data import load_dataset
        start = time.perf_counter()
        sets = load_dataset(args.dataset, root=args.data_root or params.get("data_root"),
                            **(params.get("data_options") or {}))
        for split, s in sets.items():
            counts = ", ".join(f"{name} {int((s.labels == k).sum())}" for k, name in enumerate(s.class_names))
            print(f"{args.dataset} {split}: {len(s)} images {tuple(s.shape)} ({counts})")
        print(f"loaded in {time.perf_counter() - start:.0f} s")
    elif not args.check:
        _describe(args.dataset, args.profile, result)
    else:
        print(f"{params_file(args.dataset, args.profile)}: valid")
    return 0


def _describe(dataset: str, profile: str, result: dict) -> None:
    params, about, est = result["params"], result["about"], result["estimate"]
    print(f"{params_file(dataset, profile)} -> sgc batch --dataset {dataset} --profile {profile} "
          f"(run folder <runs-dir>/{run_name(dataset, profile)})")
    for key in ("data_options", "model", "train", "estimator", "estimator_options", "batch_size"):
        if key in params:
            print(f"  {key:18s} {params[key]}")
    if est is None:
        print("  (a CPU profile: no GPU estimate)")
        return
    print(f"  sized for {about['hardware']}; stated: {about['minutes']} min, {about['gpu_memory_gib']} GiB")
    print(f"  estimates (sgc.budget, not measurements): {est['parameters']:,} parameters, images {est['shape']}")
    for what, gib in est["memory"].items():
        print(f"    memory  {what:28s} {gib:7.1f} GiB")
    for what, seconds in est["seconds"].items():
        print(f"    time    {what:28s} {seconds / 60:7.1f} min")
    print(f"    total   {'':28s} {est['minutes']:7.1f} min")
