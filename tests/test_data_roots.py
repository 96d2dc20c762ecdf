"""One data-root rule: --data-root, else $SGC_DATA/<folder>, else a default; every loader's error says so."""
from pathlib import Path

import numpy as np
import pytest

from sgc.data import load_dataset
from sgc.data.roots import DEFAULTS, FOLDERS, describe, resolve_root, root_origin


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    monkeypatch.delenv("SGC_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def test_the_three_rules_in_order(clean_env, monkeypatch):
    home = clean_env / "home"
    assert resolve_root("breastmnist") == home / ".medmnist"
    assert resolve_root("cbis_ddsm") == home / "sgc-data" / "cbis-ddsm"
    assert root_origin("breastmnist") == "the default"
    monkeypatch.setenv("SGC_DATA", str(clean_env / "data"))
    assert resolve_root("breastmnist") == clean_env / "data" / "medmnist"
    assert resolve_root("mini_mias") == clean_env / "data" / "mini-mias"
    assert root_origin("mini_mias") == "$SGC_DATA"
    assert resolve_root("mini_mias", "~/mine") == home / "mine"          # explicit wins, ~ expanded
    assert resolve_root("mini_mias", Path("rel/dir")) == Path("rel/dir")  # relative stays relative
    assert root_origin("mini_mias", "x") == "--data-root"
    assert resolve_root("mini_mias", "") == clean_env / "data" / "mini-mias"  # "" = not given
    assert resolve_root("digits") is None and resolve_root("digits", "anything") is None
    with pytest.raises(ValueError, match="no data folder is defined for dataset 'mnist'"):
        resolve_root("mnist")


def test_every_dataset_has_a_folder_and_a_documented_default():
    from sgc.data import DATASETS
    assert set(FOLDERS) == set(DATASETS) - {"digits"}
    assert set(DEFAULTS) == set(FOLDERS)
    for name in FOLDERS:
        text = describe(name)
        assert "--data-root" in text and f"$SGC_DATA/{FOLDERS[name]}" in text and DEFAULTS[name] in text


def test_sgc_data_has_the_test_data_layout(shared_data_dir, monkeypatch):
    # SGC_DATA and SGC_TEST_DATA point at the same kind of folder: one folder per source
    monkeypatch.setenv("SGC_DATA", str(shared_data_dir))
    sets = load_dataset("breastmnist")
    assert len(sets["test"]) == 156
    explicit = load_dataset("breastmnist", root=shared_data_dir / "medmnist")
    np.testing.assert_array_equal(sets["test"].images, explicit["test"].images)
    for name in ("mini_mias", "cbis_ddsm"):
        assert resolve_root(name).is_dir(), name


@pytest.mark.parametrize("name", ["breastmnist", "mini_mias", "cbis_ddsm", "inbreast", "vindr_mammo"])
def test_each_loader_states_the_rule_when_nothing_is_found(clean_env, monkeypatch, name):
    for origin, setup in (("the default", {}), ("$SGC_DATA", {"SGC_DATA": str(clean_env / "data")})):
        for key, value in setup.items():
            monkeypatch.setenv(key, value)
        with pytest.raises(FileNotFoundError) as err:
            load_dataset(name)
        text = str(err.value)
        assert str(resolve_root(name)) in text and f"(from {origin}" in text
        assert describe(name)[1:] in text, text


def test_sgc_data_pointing_at_a_dataset_folder_gets_a_hint(clean_env, monkeypatch):
    folder = clean_env / "medmnist"
    folder.mkdir()
    (folder / "breastmnist.npz").write_bytes(b"")
    monkeypatch.setenv("SGC_DATA", str(folder))                       # the old README's usage
    with pytest.raises(FileNotFoundError, match="holds one folder per source .*not a dataset's own folder"):
        load_dataset("breastmnist")


def test_a_source_error_keeps_its_text_and_gains_the_rule(clean_env, monkeypatch):
    (clean_env / "data" / "mini-mias").mkdir(parents=True)           # the folder exists, Info.txt does not
    monkeypatch.setenv("SGC_DATA", str(clean_env / "data"))
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("mini_mias")
    text = str(err.value)
    assert text.startswith("no Info.txt (or filenames.txt) under") and "from $SGC_DATA" in text
    assert text.count("the data root of mini_mias") == 1


def test_recorded_roots_hold_no_machine_path(clean_env, monkeypatch):
    from sgc.data.roots import RELATIVE_TO_RUN, describe_root, record_root, recorded_root
    run, data = clean_env / "work" / "runs" / "b", clean_env / "work" / "data" / "medmnist"
    assert record_root(data, run) == "../../data/medmnist" and record_root(None, run) is None
    assert recorded_root("../../data/medmnist", run, RELATIVE_TO_RUN).resolve() == data.resolve()
    assert recorded_root("/old/absolute", run) == Path("/old/absolute")       # run folders of sgc 0.1
    monkeypatch.setenv("SGC_DATA", str(clean_env / "work" / "data"))
    assert describe_root(data) == "$SGC_DATA/medmnist"
    assert describe_root(clean_env / "home" / "x") == "~/x"
    (clean_env / "home").mkdir()
    monkeypatch.chdir(clean_env / "home")
    assert describe_root(clean_env / "elsewhere") == "../elsewhere" and describe_root(None) is None


def test_a_run_folder_moved_with_its_data_still_finds_them(clean_env):
    """config.json records an explicit --data-root relative to the run folder, not as this machine's path."""
    import json
    import shutil
    import torch
    from sgc.pipeline import evaluate_run, train_on_dataset
    old = clean_env / "old"
    data = old / "data" / "medmnist"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.savez(data / "breastmnist.npz", **{f"{s}_images": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
                                          for s in ("train", "val", "test")},
             **{f"{s}_labels": np.arange(12, dtype=np.uint8)[:, None] % 2 for s in ("train", "val", "test")})
    torch.set_num_threads(1)
    train_on_dataset("breastmnist", old / "runs" / "b", data_root=data, model={"arch": "mlp", "hidden": 8, "blocks": 1},
                     train={"steps": 2, "batch_size": 4}, progress=False)
    config = json.loads((old / "runs" / "b" / "config.json").read_text())
    assert config["data"]["root"] == "../../data/medmnist" and str(clean_env) not in json.dumps(config)
    shutil.move(old, clean_env / "new")                                     # checkout and data move together
    m = evaluate_run(clean_env / "new" / "runs" / "b", estimator="elbo", estimator_options={"n_draws": 2},
                     progress=False)
    assert m["n"] == 12 and m["produced_by"]["data_root"] == "../../data/medmnist"
