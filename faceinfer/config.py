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
import os
import re
import tempfile
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


def save_batch_sizes(path: str | Path, sizes: dict[tuple[str, str], int]) -> None:
    """Write ``batch_size`` into the ``[<type>.<name>]`` table of each plugin in a TOML config
    file, keeping the rest of the file as it was (comments included); missing tables are
    appended. Written atomically; the result is read back and checked.

    Parameters
    ----------
    path:
        The config file (created if missing).
    sizes:
        Batch size by (plugin type, plugin name).

    Raises
    ------
    ConfigError
        If the file is not valid TOML, or sets the plugin's table in a form this editor does
        not handle (dotted keys or inline tables): nothing is written then.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not a valid TOML config file: {err}") from err
    lines = text.splitlines()
    header = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
    for (kind, name), size in sizes.items():
        wanted = f"{kind}.{name}"
        start = next((i for i, line in enumerate(lines)
                      if (m := header.match(line)) and m.group(1).replace('"', "") == wanted),
                     None)
        if start is None:
            lines += (["", f"[{wanted}]"] if lines else [f"[{wanted}]"]) + [
                f"batch_size = {size}"]
            continue
        end = next((i for i in range(start + 1, len(lines))
                    if lines[i].lstrip().startswith("[")), len(lines))
        key = re.compile(r"^\s*batch_size\s*=")
        found = next((i for i in range(start + 1, end) if key.match(lines[i])), None)
        if found is None:
            lines.insert(start + 1, f"batch_size = {size}")
        else:
            lines[found] = f"batch_size = {size}"
    out = "\n".join(lines) + "\n"
    try:
        parsed = tomllib.loads(out)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: cannot set batch sizes in this file: {err}") from err
    for (kind, name), size in sizes.items():
        if parsed.get(kind, {}).get(name, {}).get("batch_size") != size:
            raise ConfigError(f"{path}: cannot set batch_size of [{kind}.{name}] in this "
                              "file (dotted keys or inline tables?): set it by hand")
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(out)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
