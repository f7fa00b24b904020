"""Typed recipes: YAML files + dotted command-line overrides -> validated dataclasses.

Every stage (prep, pretrain, finetune) describes its settings as nested dataclasses.
`load_recipe(Cls, "recipe.yaml", ["objective.mask_ratio=0.8"])` reads the YAML, applies the
overrides, and builds the dataclass, checking every key and value type *before* any work
starts. Errors name the dotted key (`ConfigError: objective.mask_ratio: expected float, got
str 'high'`). `save_recipe` writes the resolved recipe into an output folder so every run
folder says exactly how it was made.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A recipe key or value is wrong; the message names the dotted key."""


def parse_override(text: str) -> tuple[str, Any]:
    """'a.b=1e-3' -> ('a.b', 0.001). Values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value (e.g. objective.mask_ratio=0.8)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"{key}: cannot parse value {raw!r}: {err}") from None
    return key, value


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """Set dotted keys in a nested dict (creating levels); type checks happen in build."""
    for text in overrides:
        key, value = parse_override(text)
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part, {}), dict):
                raise ConfigError(f"{key}: {part!r} is a value, not a section")
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return tree


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return "|".join(map(str, args))
    if origin in (list, tuple, dict) and args:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against annotation `tp`; returns the (possibly converted) value."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a section (mapping), got {type(value).__name__} {value!r}")
        return build(tp, value, prefix=key + ".")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        item_tp = args[0] if args else Any
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        val_tp = args[1] if len(args) == 2 else Any
        return {k: _coerce(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected bool (true/false), got {type(value).__name__} {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected int, got {type(value).__name__} {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads '1e-3' as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected float, got {type(value).__name__} {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected str, got {type(value).__name__} {value!r}")
    return value


def build(cls: type, tree: dict | None, prefix: str = "") -> Any:
    """Build dataclass `cls` from a nested dict; unknown keys and bad types are ConfigErrors."""
    tree = dict(tree or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(tree) - set(fields))
    if unknown:
        raise ConfigError(
            f"{prefix}{unknown[0]}: unknown key (valid keys here: {', '.join(sorted(fields))})"
        )
    kwargs = {}
    for name, f in fields.items():
        if name in tree:
            kwargs[name] = _coerce(tree[name], hints[name], prefix + name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{prefix}{name}: required key is missing")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {err}") from None


def load_recipe(cls: type, path: str | os.PathLike | None, overrides: list[str] | None = None) -> Any:
    """Read YAML `path` (may be None for defaults), apply dotted `overrides`, build `cls`."""
    tree: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: recipe file not found")
        try:
            tree = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{p}: not valid YAML: {err}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{p}: a recipe must be a mapping of sections, got {type(tree).__name__}")
    apply_overrides(tree, list(overrides or []))
    return build(cls, tree)


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain dict/list/scalars (YAML/JSON serialisable)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def save_recipe(obj: Any, folder: str | os.PathLike, name: str = "config.yaml") -> str:
    """Write the resolved recipe into `folder` (path or fsspec URL) atomically; returns its path."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(str(folder))
    fs.makedirs(root, exist_ok=True)
    out = f"{root}/{name}"
    with fs.open(out + ".tmp", "w") as f:
        f.write(yaml.safe_dump(to_dict(obj), sort_keys=False))
    fs.mv(out + ".tmp", out)
    return out


def _field_comments(cls: type) -> dict[str, str]:
    """name -> trailing '# comment' of its line in the class source (the recipe's help text)."""
    import inspect
    import re

    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out = {}
    for line in src.splitlines():
        m = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.+)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def describe(cls: type, prefix: str = "", sections: dict[str, dict[str, type]] | None = None) -> str:
    """Every recipe key of dataclass `cls` as '  dotted.key  type = default' lines, each followed
    by the field's source comment as help. Lists of sections show as `key[].sub`.
    `sections` maps a free-mapping field (e.g. `objective`) to {variant name: dataclass}.
    """
    lines = []
    hints = typing.get_type_hints(cls)
    notes = _field_comments(cls)
    for f in dataclasses.fields(cls):
        key, tp = prefix + f.name, hints[f.name]
        args = typing.get_args(tp)
        if dataclasses.is_dataclass(tp):
            lines.append(describe(tp, key + ".", sections))
        elif typing.get_origin(tp) is list and args and dataclasses.is_dataclass(args[0]):
            lines.append(f"  {key}  list of sections, each:")
            lines.append(describe(args[0], key + "[].", sections))
        elif sections and f.name in sections:
            for variant, sub in sections[f.name].items():
                lines.append(f"  {key}.name = {variant!r}")
                lines.append(describe(sub, f"{key}.", None))
        else:
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)")
            lines.append(f"  {key}  {_type_name(tp)} = {default!r}")
            if f.name in notes:
                lines.append(f"      {notes[f.name]}")
    return "\n".join(lines)
