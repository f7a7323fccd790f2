"""The one way every command reads its configuration: ``--params FILE`` (default
./params.yaml when present, else the built-in defaults) plus repeatable ``--set KEY=VALUE``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from sasan.config import Config, config_from_dict, load_config, parse_value
from sasan.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")


def add_params_args(p: argparse.ArgumentParser, overrides: bool = True) -> None:
    p.add_argument("--params", type=Path, default=None,
                   help=f"parameter file (default: ./{DEFAULT_PARAMS} if present, else built-in defaults)")
    if overrides:
        p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                       help="override a parameter, e.g. --set train.joint.max_steps=10 (repeatable)")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items -> dotted key -> value (parsed as YAML)."""
    return {key: value for key, (value, _) in _parse_sets(items).items()}


def _parse_sets(items: list[str]) -> dict[str, tuple[Any, str]]:
    """``--set KEY=VALUE`` items -> key -> (value, the item as typed, for errors)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = (parse_value(value), f"--set {key.strip()}={value}")
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or type(err).__name__
            raise ConfigError(f"--set {key.strip()}: {value!r} is not valid YAML ({problem})") from None
    return out


def load_params(args: argparse.Namespace) -> Config:
    """The configuration; an error in a ``--set`` value names the ``--set``, one in the file the file."""
    sets = _parse_sets(getattr(args, "set", []))
    overrides = {key: value for key, (value, _) in sets.items()}
    origins = {key: typed for key, (_, typed) in sets.items()}
    path = args.params if args.params is not None else (DEFAULT_PARAMS if DEFAULT_PARAMS.exists() else None)
    if path is None:
        return config_from_dict(_nested(overrides), "built-in defaults", origins) if overrides else Config()
    return load_config(path, overrides, origins)


def _nested(overrides: dict[str, Any]) -> dict[str, Any]:
    from sasan.config import set_dotted

    data: dict[str, Any] = {}
    for key, value in overrides.items():
        set_dotted(data, key, value)
    return data
