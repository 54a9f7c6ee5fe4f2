"""Typed plugin configuration: defaults < config file (TOML) < arguments.

A config file holds one table per plugin, named ``[<type>.<plugin name>]``::

    [detect.mtcnn]
    batch_size = 8
    threshold = 0.9

Unknown tables are ignored (a file may configure plugins not in this run); unknown keys in a
table for a plugin that is used are errors, so a typo never goes unnoticed.
"""
from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from faceinfer.errors import ConfigError
from faceinfer.plugins.base import PluginConfig

ConfigT = TypeVar("ConfigT", bound=PluginConfig)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file.

    Raises
    ------
    ConfigError
        If the file is missing or not valid TOML; the message names the file.
    """
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: config file not found") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not a valid TOML config file: {err}") from err
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config file: {err}") from err


def resolve_config(config_class: type[ConfigT], plugin_type: str, name: str,
                   config_file: str | Path | None = None,
                   overrides: Mapping[str, Any] | None = None) -> ConfigT:
    """Build a plugin's config from its defaults, its table in the config file, then
    ``overrides``.

    Raises
    ------
    ConfigError
        For an unknown key or a value of the wrong type; the message names the key and source.
    """
    valid = {f.name for f in dataclasses.fields(config_class)}
    values: dict[str, Any] = {}
    sources: list[tuple[str, Mapping[str, Any]]] = []
    if config_file is not None:
        table = load_config_file(config_file).get(plugin_type, {}).get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{config_file}: expected a table [{plugin_type}.{name}], "
                              f"got {table!r}")
        sources.append((str(config_file), table))
    if overrides:
        sources.append(("arguments", overrides))
    for source, table in sources:
        unknown = sorted(set(table) - valid)
        if unknown:
            raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)} for "
                              f"{plugin_type} plugin '{name}'; valid: {', '.join(sorted(valid))}")
        values.update(table)
    return config_class(**values)
