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
