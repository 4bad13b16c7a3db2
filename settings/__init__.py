"""Typed, validated settings, built from the YAML in configs/, for curation, training and evaluation.

Defaults live only in configs/*.yaml; the dataclasses of each part declare shape and type, so a
typo or a wrong type in a user's config fails before any work starts, naming the key. `override`
is the one reader of `--set KEY=VALUE`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the offending key."""


def build(cls: type[T], data: Any, where: str, validate: bool = True) -> T:
    """Instantiate dataclass `cls` from a mapping, checking unknown, missing and mistyped keys.

    `where` is the dotted path of `data` ("" at the root). With `validate`, each dataclass's
    `validate(where)` runs once it is built; training configs validate later instead, once the
    tokenizer has set their sizes.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where or 'config'}: unknown key(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        at = f"{where}.{name}" if where else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{at}: missing")
            continue
        values[name] = _coerce(hints[name], data[name], at, validate)
    obj = cls(**values)
    check = getattr(obj, "validate", None)
    if validate and check is not None:
        check(where)
    return obj


def _coerce(hint: Any, value: Any, where: str, validate: bool) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where, validate)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {hint}")
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where, validate)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(args[0], v, f"{where}[{i}]", validate) for i, v in enumerate(value)] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        if not args:
            return value
        return {_coerce(args[0], k, where, validate): _coerce(args[1], v, f"{where}.{k}", validate)
                for k, v in value.items()}
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(hint, type):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
        return value
    return value


def deep_merge(base: dict, over: dict) -> dict:
    """`over` laid onto `base`, mappings merged key by key; neither input is changed."""
    out = dict(base)
    for key, value in over.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def override(data: dict, item: str) -> dict:
    """`data` with `--set a.b.c=VALUE` laid onto it (`data` is not changed). VALUE is read as YAML
    (empty: null); a mapping merges key by key into the mapping it lands on; a number after a list
    picks an item (`stages.0.steps=5`)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
    try:
        value = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item}: not valid YAML: {' '.join(str(e).split())}") from None
    return _put(data, key.strip().split("."), value, item)


def _put(node: Any, path: list[str], value: Any, item: str) -> Any:
    head, rest = path[0], path[1:]
    if isinstance(node, list):
        if not head.isdigit() or int(head) >= len(node):
            raise ConfigError(f"--set {item}: {head!r} is not an item of a list of {len(node)}")
        out: Any = list(node)
        index: Any = int(head)
    else:
        out, index = dict(node) if isinstance(node, dict) else {}, head
    old = out[index] if isinstance(out, list) or index in out else None
    if rest:
        out[index] = _put(old if isinstance(old, dict | list) else {}, rest, value, item)
    else:
        out[index] = deep_merge(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
    return out


def check_fraction(where: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise ConfigError(f"{where}: must be within 0..1, got {value}")


def stage_defaults(name: str) -> dict:
    """configs/stages/<name>.yaml, where every default of stage `name` lives."""
    from importlib import resources

    return yaml.safe_load(resources.files("simulforge.configs").joinpath("stages", f"{name}.yaml").read_text())


def load_stage(cls: type[T], name: str, overrides: dict | None = None) -> T:
    """A stage's settings: its defaults with `overrides` merged in, validated."""
    return build(cls, deep_merge(stage_defaults(name), overrides or {}), name)
