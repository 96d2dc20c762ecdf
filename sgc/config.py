"""Nested configuration with dot-list overrides that merge, one syntax for every entry point.

A configuration is a plain nested dict (JSON-ready): sections such as ``train`` or ``model``
hold keys, leaves hold values. Overrides are ``key=value`` strings whose key is a dotted path
and whose value is a YAML scalar, list or mapping::

    train.steps=2000              # one key of a section
    model.channels=64
    "train={steps: 20, lr: 1e-4}" # a mapping MERGES key by key: lr, weighting, ... keep their values
    tolerances=[1e-2, 1e-3]       # lists and scalars replace
    limit=null                    # YAML null (an empty value is null too)

Values are read with ``yaml.safe_load`` plus the YAML 1.2 float rule, so ``1e-5`` is the float
1e-05 (YAML 1.1 alone reads it as a string); quote a value to keep it a string (``"tag='1e5'"``).
Later overrides win. Keys are checked against a *schema* (see :func:`validate`): an unknown
key fails with its dotted name, the keys known where it was looked up and a suggestion found in
the right namespace (``train_steps`` -> "did you mean 'train.steps'?").

Intended use (the CLI and ``sgc batch`` call the same three functions)::

    # sgc train --set train.steps=2000 model.channels=64        (and the legacy --train steps=2000)
    items = args.set + section_items("train", args.train) + section_items("model", args.model)
    config = apply_overrides(defaults, items, schema={"train": TrainConfig, "model": OPEN, ...})

    # sgc batch --dataset breastmnist -p train.steps=2000 limit=50
    params = apply_overrides(load_params(dataset), args.param, schema=notebook_schema)
    # papermill then receives the merged nested dicts (train = the full dict, one key changed)

From Python: ``merge(defaults, {"train": {"steps": 20}})`` and ``parse_overrides([...])``.
Written here rather than taken from OmegaConf: the part we need (dot-list parse, deep merge,
checks with suggestions) is about 150 lines, our configs must stay plain dicts for JSON and
papermill, and OmegaConf's errors carry no suggestion, so we would wrap it anyway.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import typing
from collections.abc import Iterable, Mapping

import yaml

from .errors import ConfigError  # one class for every bad option: a ValueError and an SgcError

__all__ = ["OPEN", "ConfigError", "parse_value", "load_yaml", "parse_overrides", "section_items", "merge", "suggest",
           "validate", "apply_overrides", "schema_from_defaults"]


class _Open:
    """Schema marker: a section that takes any keys (e.g. network keywords that depend on the arch)."""

    def __repr__(self) -> str:
        return "OPEN"


OPEN = _Open()


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats without a dot (1e-5, 2E+3) as floats."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*(?:\.[A-Za-z_][A-Za-z0-9_\-]*)*$")


def load_yaml(text: str):
    """``yaml.safe_load`` with 1e-5-style floats read as floats (no code is ever executed)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def parse_value(text: str):
    """One override's value: a YAML scalar, list or mapping (``""`` -> None)."""
    try:
        return load_yaml(text)
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0]
        raise ConfigError(f"value {text!r} is not a plain YAML value (not valid YAML: {first}). Write a number, "
                          f"true/false, a [list], a {{mapping}} or a string (quote it to keep it a string); "
                          f"tags such as !!python/... are refused") from None


def _set(tree: dict, path: list[str], value, item: str) -> None:
    node = tree
    for i, part in enumerate(path[:-1]):
        child = node.get(part)
        if not isinstance(child, dict):
            if part in node:  # an earlier override gave this path a plain value
                raise ConfigError(f"{item!r}: {'.'.join(path[:i + 1])} was set to a value, not a section")
            child = node[part] = {}
        node = child
    last = path[-1]
    if isinstance(value, dict) and isinstance(node.get(last), dict):
        node[last] = merge(node[last], value)
    else:
        node[last] = value


def parse_overrides(items: Iterable[str] | None) -> dict:
    """``["train.steps=2000", "train={lr: 1e-4}", ...]`` -> nested dict (later items win, mappings merge)."""
    if isinstance(items, str):
        raise ConfigError(f"overrides must be a list of key=value strings, not the string {items!r}")
    out: dict = {}
    for item in items or []:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"expected key=value (e.g. train.steps=2000), got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip()
        if not _KEY.match(key):
            raise ConfigError(f"{item!r}: {key!r} is not a key; use names joined by dots, e.g. train.steps")
        _set(out, key.split("."), parse_value(text), item)
    return out


def section_items(section: str, items: Iterable[str] | None) -> list[str]:
    """The legacy flat form of one section as dot-list items: ("train", ["steps=20"]) -> ["train.steps=20"].

    So ``--train steps=20 lr=1e-3`` and ``--set train.steps=20 train.lr=1e-3`` mean the same.
    """
    out = []
    for item in items or []:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"--{section}: expected key=value (e.g. steps=2000), got {item!r}")
        out.append(f"{section}.{item.lstrip()}")
    return out


def merge(base: Mapping | None, override: Mapping | None) -> dict:
    """Deep merge: a mapping merges key by key, anything else replaces. Inputs are not modified."""
    out = copy.deepcopy(dict(base or {}))
    for key, value in (override or {}).items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# --------------------------------------------------------------------------- schemas
def _is_dataclass_type(obj) -> bool:
    return dataclasses.is_dataclass(obj)


def _section(schema):
    """(known keys -> sub-schema, type hints) of a section schema, or None for a leaf / OPEN."""
    if isinstance(schema, Mapping):
        return dict(schema), {}
    if _is_dataclass_type(schema):
        cls = schema if isinstance(schema, type) else type(schema)
        hints = typing.get_type_hints(cls)
        keys = {}
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            nested = hints.get(f.name)
            if _is_dataclass_type(nested):
                keys[f.name] = nested
            else:  # a dict-valued field takes any keys
                keys[f.name] = OPEN if isinstance(default, Mapping) else default
        return keys, hints
    return None


def schema_from_defaults(defaults: Mapping, open_sections: Iterable[str] = ()) -> dict:
    """A schema from a dict of defaults: non-empty dicts are closed sections, empty ones OPEN.

    ``open_sections``: dotted names of sections that take any keys (their defaults only show one
    possible content, e.g. ``model`` whose keys depend on ``arch``).
    """
    open_sections = set(open_sections)

    def build(node: Mapping, prefix: str):
        out = {}
        for key, value in node.items():
            name = f"{prefix}{key}"
            if name in open_sections or (isinstance(value, Mapping) and not value):
                out[key] = OPEN
            elif isinstance(value, Mapping):
                out[key] = build(value, name + ".")
            else:
                out[key] = value
        return out
    return build(defaults, "")


def _paths(schema, prefix: str = "") -> list[str]:
    """Every dotted key the schema knows (sections and their keys)."""
    sec = _section(schema)
    if sec is None:
        return []
    out = []
    for key, sub in sec[0].items():
        out.append(prefix + key)
        out += _paths(sub, f"{prefix}{key}.")
    return out


def _norm(key: str) -> str:
    return re.sub(r"[.\-_]+", "_", key.lower())


def suggest(key: str, schema) -> list[str]:
    """Known dotted keys the unknown ``key`` was probably meant to be (best first, may be empty)."""
    known = _paths(schema)
    exact = [k for k in known if _norm(k) == _norm(key)]        # train_steps -> train.steps
    if exact:
        return exact
    leaf = key.rsplit(".", 1)[-1]
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    same_leaf = [k for k in known if k.rsplit(".", 1)[-1] == leaf]  # steps -> train.steps
    if same_leaf:
        return same_leaf
    if parent:  # look among the siblings first: train.stpes -> train.steps
        siblings = [k for k in known if k.rsplit(".", 1)[0] == parent and "." in k]
        close = difflib.get_close_matches(_norm(key), [_norm(k) for k in siblings], n=1, cutoff=0.6)
        if close:
            return [k for k in siblings if _norm(k) == close[0]]
    close = difflib.get_close_matches(_norm(key), [_norm(k) for k in known], n=1, cutoff=0.75)
    return [k for c in close for k in known if _norm(k) == c]


_SIMPLE = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _type_error(name: str, value, hint) -> str | None:
    if hint not in _SIMPLE or value is None:
        return None
    ok = {int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          bool: isinstance(value, bool), str: isinstance(value, str)}[hint]
    return None if ok else f"{name} must be {_SIMPLE[hint]}, got {value!r} ({type(value).__name__})"


def validate(config: Mapping, schema, *, what: str = "key") -> None:
    """Check every key of ``config`` against ``schema``; ConfigError lists all problems at once.

    schema: a Mapping {key: sub-schema} (a closed section), a dataclass type (its fields, a
    closed section; int/float/bool/str fields are type-checked), ``OPEN`` (any keys), or
    anything else (a leaf value: any value is accepted). ``what`` names keys in messages
    (e.g. "notebook parameter").
    """
    problems: list[str] = []

    def walk(node: Mapping, sub, prefix: str):
        keys, hints = _section(sub)
        for key, value in node.items():
            name = f"{prefix}{key}"
            if key not in keys:
                hint = suggest(name, schema)
                where = f"'{prefix[:-1]}'" if prefix else "the top level"
                known = ", ".join(sorted(keys)) or "(none)"
                problems.append(f"unknown {what} {name!r}"
                                + (f" (did you mean {' or '.join(repr(h) for h in hint)}?)" if hint else "")
                                + f"; known at {where}: {known}")
                continue
            child = keys[key]
            if child is OPEN:
                continue
            if _section(child) is not None:
                if isinstance(value, Mapping):
                    walk(value, child, name + ".")
                else:
                    problems.append(f"{name} is a section ({', '.join(sorted(_section(child)[0]))}); "
                                    f"set one key as {name}.<key>=value or several as {name}={{key: value}}, "
                                    f"not {value!r}")
                continue
            error = _type_error(name, value, hints.get(key))
            if error is None and isinstance(value, Mapping) and child is not None and not isinstance(child, Mapping):
                error = f"{name} is a value (default {child!r}), not a section: set it as {name}=value"
            if error:
                problems.append(error)

    if schema is OPEN:
        return
    if _section(schema) is None:
        raise TypeError(f"schema must be a Mapping, a dataclass or OPEN, not {type(schema).__name__}")
    walk(config, schema, "")
    if problems:
        raise ConfigError("; ".join(problems) if len(problems) == 1 else "\n  " + "\n  ".join(problems))


def apply_overrides(defaults: Mapping | None, items: Iterable[str] | None, schema=None, *,
                    what: str = "key") -> dict:
    """Defaults merged with the parsed dot-list ``items``, checked against ``schema`` when given.

    Only the overrides are checked (the defaults are the program's own); returns a new dict.
    """
    override = parse_overrides(items)
    if schema is not None:
        validate(override, schema, what=what)
    return merge(defaults, override)
