"""sgc.config: dot-list overrides merge into nested defaults; unknown keys fail with the right hint."""
import dataclasses

import pytest

from sgc.config import (OPEN, ConfigError, apply_overrides, load_yaml, merge, parse_overrides, parse_value,
                        schema_from_defaults, section_items, suggest, validate)
from sgc.train import TrainConfig

# the shape of a notebook parameter set: sections, open sections and look-alike leaves
DEFAULTS = {
    "train": {"steps": 300, "batch_size": 128, "lr": 0.002, "warmup": 50, "weighting": "likelihood",
              "hflip": True},
    "model": {"arch": "mlp", "hidden": 128},
    "data_options": {},
    "limit": None,
    "fraction_steps": 300,
    "toy_steps": 1500,
    "tolerances": [0.01, 0.001],
}
SCHEMA = {**schema_from_defaults(DEFAULTS, open_sections=["model"]), "train": TrainConfig}


def test_values_are_yaml_with_yaml_1_2_floats():
    assert parse_value("1e-5") == 1e-5 and isinstance(parse_value("1e-5"), float)
    assert parse_value("-2.5E+3") == -2500.0 and parse_value("1E5") == 1e5
    assert parse_value("10") == 10 and isinstance(parse_value("10"), int)
    assert parse_value("[1e-2, 1e-3]") == [0.01, 0.001]
    assert parse_value("{rtol: 1e-5, method: dopri5}") == {"rtol": 1e-5, "method": "dopri5"}
    assert parse_value("true") is True and parse_value("null") is None and parse_value("") is None
    assert parse_value('"1e-5"') == "1e-5"          # quoted: stays a string
    assert parse_value("dopri5") == "dopri5" and parse_value("nan") == "nan"
    assert load_yaml("a: 1e-4\nb: [2e3]") == {"a": 1e-4, "b": [2000.0]}
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_value("[1, 2")


def test_dot_list_builds_nested_dict_and_later_items_win():
    got = parse_overrides(["train.steps=2000", "model.channels=64", "train={lr: 1e-4}", "train.steps=20",
                           "limit=50", "a.b.c=x=y"])
    assert got == {"train": {"steps": 20, "lr": 1e-4}, "model": {"channels": 64}, "limit": 50,
                   "a": {"b": {"c": "x=y"}}}
    assert parse_overrides(None) == {} and parse_overrides([]) == {}


@pytest.mark.parametrize("item, message", [
    ("steps", "expected key=value"),
    ("=3", "is not a key"),
    ("train..steps=3", "is not a key"),
    ("1train=3", "is not a key"),
])
def test_malformed_items_are_named(item, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse_overrides([item])
    assert repr(item) in str(err.value) or repr(item.split("=")[0]) in str(err.value)


def test_a_value_then_a_section_at_the_same_path_is_an_error():
    with pytest.raises(ConfigError, match="train was set to a value"):
        parse_overrides(["train=5", "train.steps=3"])


def test_a_mapping_override_merges_instead_of_replacing():
    # the issue: -p 'train={steps: 20}' replaced the whole dict (lr, weighting, hflip, warm-up lost)
    config = apply_overrides(DEFAULTS, ["train={steps: 20}"], SCHEMA)
    assert config["train"] == {**DEFAULTS["train"], "steps": 20}
    assert apply_overrides(DEFAULTS, ["train.steps=20"], SCHEMA) == config
    # lists and scalars replace; the defaults are not modified
    config = apply_overrides(DEFAULTS, ["tolerances=[1e-4]", "model.arch=unet", "model.channels=64"], SCHEMA)
    assert config["tolerances"] == [1e-4] and config["model"] == {"arch": "unet", "hidden": 128, "channels": 64}
    assert DEFAULTS["train"]["steps"] == 300 and DEFAULTS["tolerances"] == [0.01, 0.001]


def test_merge_is_deep_and_copies():
    base = {"a": {"b": {"c": 1, "d": [1]}, "e": 2}}
    out = merge(base, {"a": {"b": {"c": 5}}})
    assert out == {"a": {"b": {"c": 5, "d": [1]}, "e": 2}}
    out["a"]["b"]["d"].append(9)
    assert base["a"]["b"]["d"] == [1]
    assert merge(base, {"a": 3}) == {"a": 3}          # a value replaces a section


@pytest.mark.parametrize("item, hint", [
    ("train_steps=2000", "'train.steps'"),            # the wrong hint was 'fraction_steps'
    ("steps=2000", "'train.steps'"),                  # a leaf name known in exactly one section
    ("train.stpes=3", "'train.steps'"),               # a typo inside a section: its siblings first
    ("train.batchsize=3", "'train.batch_size'"),
    ("fraction_step=3", "'fraction_steps'"),
    ("limt=3", "'limit'"),
])
def test_unknown_keys_get_the_suggestion_of_their_namespace(item, hint):
    with pytest.raises(ConfigError) as err:
        apply_overrides(DEFAULTS, [item], SCHEMA)
    text = str(err.value)
    key = item.split("=")[0]
    assert f"unknown key {key!r}" in text and f"did you mean {hint}?" in text
    assert "fraction_steps" not in text.split("did you mean")[1].split("?")[0] or hint == "'fraction_steps'"


def test_error_lists_the_known_keys_where_the_key_was_looked_up():
    with pytest.raises(ConfigError) as err:
        apply_overrides(DEFAULTS, ["train.stpes=3"], SCHEMA)
    known = str(err.value).split("known at 'train': ")[1].split(", ")
    assert known == sorted(f.name for f in dataclasses.fields(TrainConfig))
    with pytest.raises(ConfigError, match=r"unknown key 'zzz'; known at the top level: data_options, "
                                          r"fraction_steps, limit, model, tolerances, toy_steps, train$"):
        apply_overrides(DEFAULTS, ["zzz=1"], SCHEMA)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        apply_overrides(DEFAULTS, ["foo=1", "train.stpes=2", "train.steps=abc"], SCHEMA)
    text = str(err.value)
    assert "'foo'" in text and "'train.stpes'" in text and "train.steps must be an integer, got 'abc'" in text


def test_open_sections_take_any_key_and_closed_leaves_are_not_sections():
    assert apply_overrides(DEFAULTS, ["data_options.size=32", "model.anything.deep=1"], SCHEMA)["data_options"] \
        == {"size": 32}
    with pytest.raises(ConfigError, match=r"train is a section .*train\.<key>=value"):
        apply_overrides(DEFAULTS, ["train=5"], SCHEMA)
    with pytest.raises(ConfigError, match="fraction_steps is a value"):
        apply_overrides(DEFAULTS, ["fraction_steps.x=1"], SCHEMA)
    assert apply_overrides(DEFAULTS, ["limit={a: 1}"], SCHEMA)["limit"] == {"a": 1}   # default None: any value


def test_dataclass_fields_are_type_checked():
    validate({"train": {"lr": 1, "steps": 5, "hflip": False, "weighting": "sigma2"}}, SCHEMA)  # int is a number
    for item, message in (("train.steps=2.5", "train.steps must be an integer"),
                          ("train.hflip=3", "train.hflip must be true or false"),
                          ("train.lr=fast", "train.lr must be a number"),
                          ("train.steps=true", "train.steps must be an integer")):
        with pytest.raises(ConfigError, match=message):
            apply_overrides(DEFAULTS, [item], SCHEMA)


def test_nested_dataclasses_are_sections():
    @dataclasses.dataclass
    class Inner:
        rate: float = 0.1

    @dataclasses.dataclass
    class Outer:
        inner: Inner = dataclasses.field(default_factory=Inner)
        options: dict = dataclasses.field(default_factory=dict)
        name: str = "x"

    validate(parse_overrides(["inner.rate=0.5", "options.anything=1", "name=y"]), Outer)
    with pytest.raises(ConfigError, match=r"unknown key 'inner.rte' \(did you mean 'inner.rate'\?\)"):
        validate(parse_overrides(["inner.rte=0.5"]), Outer)
    validate({"x": {"y": 1}}, OPEN)
    with pytest.raises(TypeError):
        validate({}, 3)


def test_legacy_section_lists_become_dot_lists():
    items = section_items("train", ["steps=20", "lr=1e-3"]) + section_items("model", ["channels=64"])
    assert items == ["train.steps=20", "train.lr=1e-3", "model.channels=64"]
    assert apply_overrides(DEFAULTS, items, SCHEMA)["train"]["lr"] == 1e-3
    assert section_items("train", None) == []
    with pytest.raises(ConfigError, match="--train: expected key=value"):
        section_items("train", ["steps"])


def test_suggest_returns_nothing_for_unrelated_keys():
    assert suggest("qqqqqq", SCHEMA) == []
    assert suggest("train_steps", SCHEMA) == ["train.steps"]
