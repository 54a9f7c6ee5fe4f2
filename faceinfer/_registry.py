"""One explicit registry per plugin type, filled by a decorator when a plugin module is imported.

Built-in plugins live in :mod:`faceinfer.plugins`; third-party packages add theirs through the
``faceinfer.plugins`` entry point group, each entry naming a module whose import registers
plugins. Nothing is discovered by scanning source files.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from importlib import metadata
from typing import TypeVar

from faceinfer.errors import PluginError
from faceinfer.plugins.base import (
    PLUGIN_TYPES,
    AlignPlugin,
    DetectPlugin,
    ExtractPlugin,
    IdentityPlugin,
    MaskPlugin,
    PluginType,
)

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "faceinfer.plugins"
TEST_PREFIX = "test-"
"""Names starting with this are test plugins: registered, but hidden from listings."""

_BASES: dict[PluginType, type[ExtractPlugin]] = {
    "detect": DetectPlugin,  # type: ignore[type-abstract]
    "align": AlignPlugin,  # type: ignore[type-abstract]
    "mask": MaskPlugin,  # type: ignore[type-abstract]
    "identity": IdentityPlugin,  # type: ignore[type-abstract]
}
_REGISTRY: dict[PluginType, dict[str, type[ExtractPlugin]]] = {t: {} for t in PLUGIN_TYPES}
_LOAD_LOCK = threading.Lock()
_loaded = False

PluginT = TypeVar("PluginT", bound=type[ExtractPlugin])


def _check_type(plugin_type: str) -> PluginType:
    if plugin_type not in PLUGIN_TYPES:
        raise PluginError(f"expected a plugin type in {', '.join(PLUGIN_TYPES)}, "
                          f"got '{plugin_type}'")
    return plugin_type


def register_plugin(plugin_type: PluginType, name: str) -> Callable[[PluginT], PluginT]:
    """Class decorator registering a plugin under ``name`` for ``plugin_type``.

    Raises
    ------
    PluginError
        If the name is taken for that type, or the class is not a plugin of that type.
    """
    kind = _check_type(plugin_type)

    def decorate(cls: PluginT) -> PluginT:
        base = _BASES[kind]
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginError(f"expected a subclass of {base.__name__} for {kind} plugin "
                              f"'{name}', got {cls!r}")
        if not name or name != name.strip().lower() or " " in name:
            raise PluginError(f"expected a lower-case plugin name without spaces, got '{name}'")
        known = _REGISTRY[kind].get(name)
        if known is not None:
            raise PluginError(f"{kind} plugin '{name}' is already registered by "
                              f"{known.__module__}.{known.__qualname__}; cannot register "
                              f"{cls.__module__}.{cls.__qualname__}")
        cls.name = name
        _REGISTRY[kind][name] = cls
        return cls

    return decorate


def unregister_plugin(plugin_type: PluginType, name: str) -> None:
    """Remove a registered plugin (for tests and for plugin packages being reloaded)."""
    _REGISTRY[_check_type(plugin_type)].pop(name, None)


def _ensure_loaded() -> None:
    global _loaded  # noqa: PLW0603 (one-time import of plugin modules, guarded by a lock)
    with _LOAD_LOCK:
        if _loaded:
            return
        _loaded = True
        from faceinfer.plugins import load_builtin  # noqa: PLC0415 (plugins import this module)

        load_builtin()
        for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                entry.load()
            except Exception as err:  # noqa: BLE001 (one broken package must not stop the rest)
                logger.warning("Could not load plugins from entry point '%s' (%s): %s",
                               entry.name, entry.value, err)


def list_plugins(plugin_type: PluginType, include_test: bool = False) -> list[str]:
    """The sorted names of the registered plugins of a type. Test plugins only on request."""
    kind = _check_type(plugin_type)
    _ensure_loaded()
    return sorted(name for name in _REGISTRY[kind]
                  if include_test or not name.startswith(TEST_PREFIX))


def get_plugin(plugin_type: PluginType, name: str) -> type[ExtractPlugin]:
    """The plugin class registered under ``name`` for ``plugin_type``.

    Raises
    ------
    PluginError
        If no such plugin is registered; the message lists the ones that are.
    """
    kind = _check_type(plugin_type)
    _ensure_loaded()
    found = _REGISTRY[kind].get(name)
    if found is None:
        names = ", ".join(list_plugins(kind, include_test=name.startswith(TEST_PREFIX))) or "none"
        raise PluginError(f"expected a {kind} plugin in ({names}), got '{name}'")
    return found
