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
