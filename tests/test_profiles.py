"""GPU profiles (notebooks/params/<dataset>.gpu.yaml) and the reports that name their runs."""
import json

from sgc.runs import collect_metrics, config_id


def _config(folder, **changes):
    config = {"model": {"arch": "unet", "channels": 32}, "sde": {"name": "vp"}, "train": {"steps": 100, "lr": 1e-3},
              "data": {"dataset": "breastmnist", "options": {"size": 32}, "root": "/somewhere", "n_train": 546},
              "provenance": {"host": "a"}}
    for key, value in changes.items():
        section, name = key.split("__")
        config[section][name] = value
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_config_id_names_how_a_model_was_made_not_where(tmp_path):
    base = config_id(_config(tmp_path / "a"))
    assert len(base) == 8 and int(base, 16) >= 0
    assert config_id(_config(tmp_path / "b", data__root="/elsewhere", provenance__host="b")) == base
    assert config_id(_config(tmp_path / "c", train__lr=2e-3)) != base
    assert config_id(_config(tmp_path / "d", data__options={"size": 64})) != base
    assert config_id(tmp_path / "absent") is None
    metrics = {"auc_macro_ovr": 0.9, "dataset": "breastmnist"}
    (tmp_path / "a" / "metrics_test_ode.json").write_text(json.dumps(metrics))
    found, _ = collect_metrics(tmp_path)
    assert [(m["run"], m["config_id"]) for m in found] == [("a", base)]


# --- the profiles themselves: what `make test` checks before any GPU time is spent ------------------
import shutil  # noqa: E402

import pytest  # noqa: E402

from conftest import REPO  # noqa: E402
from sgc import profiles  # noqa: E402
from sgc.batch import list_notebooks, notebook_defaults  # noqa: E402
from sgc.errors import ConfigError  # noqa: E402

PARAMS = REPO / "notebooks" / "params"
GPU_DATASETS = {"breastmnist", "cbis_ddsm", "inbreast", "vindr_mammo", "mini_mias"}


def test_every_dataset_has_a_gpu_profile_and_cbis_ddsm_has_lesion_crops_too():
    found = set(profiles.list_profiles())
    assert {(d, "gpu") for d in GPU_DATASETS} <= found and ("cbis_ddsm", "gpu-roi") in found
    assert profiles.list_profiles()[:2] == [("breastmnist", "cpu"), ("breastmnist", "gpu")]   # cpu first


@pytest.mark.parametrize("dataset,profile", profiles.list_profiles(), ids=lambda v: str(v))
def test_every_profile_is_valid_and_fits_an_80_gb_gpu(dataset, profile):
    result = profiles.check_profile(dataset, profile)
    if profile == profiles.CPU:
        assert result["estimate"] is None
        return
    est, about, params = result["estimate"], result["about"], result["params"]
    assert est["gib"] < 80 and est["memory"]["training"] <= about["gpu_memory_gib"]
    assert est["minutes"] <= about["minutes"]
    for key in ("model", "train", "estimator", "estimator_options", "data_options"):   # each names these
        assert key in params, (dataset, profile, key)
    assert params["model"]["arch"] == "unet" and params["train"]["steps"] >= 1000


def test_the_paper_settings_are_the_profiles_settings():
    vindr, _ = profiles.load_profile("vindr_mammo", "gpu")
    assert vindr["data_options"]["size"] == 384 and vindr["data_options"]["channels"] == 3
    assert vindr["data_options"]["malignant_birads"] == [4, 5] and vindr["train"]["batch_size"] == 32
    cbis, _ = profiles.load_profile("cbis_ddsm", "gpu")
    roi, _ = profiles.load_profile("cbis_ddsm", "gpu-roi")
    assert (cbis["data_options"]["level"], roi["data_options"]["level"]) == ("image", "lesion")
    assert cbis["data_options"]["size"] == roi["data_options"]["size"] == 256
    bm, about = profiles.load_profile("breastmnist", "gpu")
    assert bm["data_options"] == {"size": 32} and bm["model"]["channels"] == 32 and about["minutes"] <= 8


def test_every_numeric_notebook_parameter_has_a_range_rule():
    sections = {"data_options", "model", "sde", "train", "estimator_options", "score_options", "baseline_options"}
    paths = {"dataset", "data_root", "run_dir", "figures_dir", "runs_dir", "reports_dir", "mini_mias_root",
             "cbis_ddsm_root", "baseline", "check_results", "experiment_classifiers", "probe_settings"}
    for nb in list_notebooks():
        for name, default in notebook_defaults(nb).items():
            known = name in profiles.RANGES or name in profiles.CHOICES or name in sections or name in paths
            assert known, f"{nb.stem}: parameter {name!r} (default {default!r}) has no rule in sgc.profiles"


def _copy_params(tmp_path, dataset="breastmnist", profile="gpu", edit=None):
    folder = tmp_path / "params"
    folder.mkdir(exist_ok=True)
    text = profiles.params_file(dataset, profile).read_text()
    (folder / profiles.params_file(dataset, profile).name).write_text(edit(text) if edit else text)
    return folder


def test_profile_problems_are_named_before_any_work(tmp_path):
    check = profiles.check_profile
    with pytest.raises(ConfigError, match=r"unknown notebook parameter 'train_stpes'"):
        check("breastmnist", "gpu", overrides={"train_stpes": 10})
    with pytest.raises(ConfigError, match=r"unknown training option"):
        check("breastmnist", "gpu", overrides={"train": {"stpes": 10}})
    with pytest.raises(ConfigError, match=r"min_auc = 1.5 is out of range"):
        check("breastmnist", "gpu", overrides={"min_auc": 1.5})
    with pytest.raises(ConfigError, match=r"data_options.channels must be 1 or 3"):
        check("breastmnist", "gpu", overrides={"data_options": {"channels": 2}})
    with pytest.raises(ConfigError, match=r"data_options.preprocess: unknown preprocessing settings \['clahe_clipp'\]"):
        check("vindr_mammo", "gpu", overrides={"data_options": {"preprocess": {"clahe_clipp": 0.02}}})
    with pytest.raises(ConfigError, match=r"image_size must be between 8 and 384"):
        check("vindr_mammo", "gpu", overrides={"data_options": {"size": 512}})
    with pytest.raises(ConfigError, match=r"estimated peak GPU memory, \d+\.\d GiB \(training\), does not fit 80 GB"):
        check("vindr_mammo", "gpu", overrides={"train": {"batch_size": 128}})
    longer = _copy_params(tmp_path, edit=lambda t: t.replace("train: {steps: 5000,", "train: {steps: 20000,"))
    with pytest.raises(ConfigError, match=r"profile.minutes = 8 but the estimate is"):
        check("breastmnist", "gpu", params_dir=longer)
    assert check("breastmnist", "gpu", overrides={"train": {"steps": 20000}})["estimate"]["minutes"] > 8  # -p: no claim
    stale = _copy_params(tmp_path, "cbis_ddsm", "gpu", lambda t: t.replace("  gpu_memory_gib: 29 ", "  gpu_memory_gib: 79 "))
    with pytest.raises(ConfigError, match=r"profile.gpu_memory_gib = 79 but the estimate is 28.\d GiB: state a value"):
        check("cbis_ddsm", "gpu", params_dir=stale)
    bare = _copy_params(tmp_path, "mini_mias", "gpu", lambda t: t.replace("  test_images: 23", ""))
    with pytest.raises(ConfigError, match=r"profile.test_images is missing"):
        check("mini_mias", "gpu", params_dir=bare)
    with pytest.raises(ConfigError, match=r"no profile 'tpu' for dataset 'breastmnist'.*breastmnist --profile gpu"):
        profiles.load_profile("breastmnist", "tpu")
    assert profiles.load_profile("medmnist") == ({}, {})     # no CPU file: the notebooks' defaults
    assert profiles.run_name("breastmnist") == "breastmnist" and profiles.run_name("breastmnist", "gpu") == "breastmnist-gpu"


def test_train_arguments_are_the_profile_as_sgc_train_settings():
    from sgc.cli import build_parser
    from sgc.config import parse_overrides
    params, _ = profiles.load_profile("vindr_mammo", "gpu")
    argv = profiles.train_arguments(params)
    args = build_parser().parse_args(["train", "--dataset", "vindr_mammo", "--run-dir", "r", *argv])
    parsed = parse_overrides(args.set)
    for section in ("data_options", "model", "sde", "train"):
        assert parsed[section] == params[section]
