"""sgc.notebook: the one set-up the numbered notebooks share (checks, folders, data source, example image)."""
from pathlib import Path

import pytest

from sgc.notebook import data_source, example_image, setup


def test_setup_checks_the_shared_parameters_with_sgcs_messages(tmp_path):
    kw = dict(run_dir=tmp_path / "run", device="cpu", show=False)
    with pytest.raises(ValueError, match=r"unknown model option\(s\) 'hiden' \(did you mean 'hidden'\?\)"):
        setup("digits", model={"arch": "mlp", "hiden": 3}, **kw)
    with pytest.raises(ValueError, match=r"'stepz' \(did you mean 'steps'\?\)"):
        setup("digits", train={"stepz": 3}, **kw)
    with pytest.raises(ValueError, match=r"unknown dataset 'digitz'"):
        setup("digitz", **kw)
    with pytest.raises(ValueError, match="data_options must be a dict"):
        setup("digits", data_options=[1], **kw)
    assert not (tmp_path / "run").exists()                      # nothing made before the checks pass
    nb = setup("digits", model={"arch": "mlp", "hidden": 8}, train={"steps": 2}, sde={"name": "vp"}, **kw)
    assert nb.run_dir == tmp_path / "run" and nb.run_dir.is_dir() and nb.figures_dir == nb.run_dir / "figures"
    assert nb.device == "cpu"


def test_setup_prints_folders_data_source_and_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SGC_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("SGC_RUN_DIR", str(tmp_path / "runs"))
    nb = setup("breastmnist", device="cpu")
    out = capsys.readouterr().out
    assert nb.run_dir == tmp_path / "runs" / "breastmnist"
    assert "data         $SGC_DATA/medmnist (from $SGC_DATA)" in out and str(tmp_path / "data") not in out
    assert "torch" in out and "cpu_threads" in out
    assert data_source("digits").startswith("scikit-learn's embedded digits")


def test_example_image_uses_the_rule_then_pydicoms_test_ct(tmp_path, monkeypatch):
    monkeypatch.setenv("SGC_DATA", str(tmp_path / "empty"))
    path, source = example_image("auto")                         # nothing found: the bundled CT, never None
    assert path is not None and path.name == "CT_small.dcm" and "pydicom's bundled test CT" in source
    found = tmp_path / "data" / "mini-mias" / "mdb001.pgm"
    found.parent.mkdir(parents=True)
    found.write_bytes(b"P5\n2 2\n255\n\0\0\0\0")
    monkeypatch.setenv("SGC_DATA", str(tmp_path / "data"))
    path, source = example_image("auto")
    assert path == found and source.startswith("mini_mias: $SGC_DATA/mini-mias/mdb001.pgm")
    assert example_image(None) == (None, "skipped (preprocess_example is None)")
    assert example_image("x.dcm")[0] == Path("x.dcm")
