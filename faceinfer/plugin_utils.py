"""Helpers for plugins that hold torch modules: finding them, feeding them random input,
warming them up (which also tells channels-first from channels-last) and compiling them.

torch is imported inside the functions, so importing faceinfer stays light.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from faceinfer.plugins.base import ExtractPlugin

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

RECOMPILE_LIMIT = 64
"""The least recompile limit (``torch._dynamo.config.recompile_limit``, 8 by default) set when
compiling: each compiled plugin instance adds entries to the caches of its modules' code, and a
process may build several instances of a plugin. torch's config is per thread: the limit holds
in the thread that compiles and warms up, where all compiling is meant to happen."""


@runtime_checkable
class CompiledWarmup(Protocol):
    """A plugin with shapes of its own to warm up once its torch modules are compiled (for
    example mtcnn's R-Net and O-Net, fed a varying number of candidates)."""

    def warmup_compiled(self) -> None:
        """Run every input shape the compiled modules will meet, so none compiles later."""


def get_torch_modules(obj: Any, mod: str | None = None, seen: set[int] | None = None,
                      results: list[torch.nn.Module] | None = None) -> list[torch.nn.Module]:
    """Find the outermost :class:`torch.nn.Module` objects held by a plugin's ``model``.

    Walks attributes, lists, tuples and dicts, but only into objects defined in the same
    top-level package as ``obj``, so it never wanders into library internals.

    Parameters
    ----------
    obj:
        Where to look, usually a plugin's ``model`` attribute.
    mod:
        The top-level package to stay inside. Default: that of ``obj``.
    seen:
        Ids of objects already visited. Default: a new set.
    results:
        Where found modules are appended. Default: a new list.
    """
    import torch  # noqa: PLC0415

    seen = set() if seen is None else seen
    results = [] if results is None else results
    if id(obj) in seen or obj is None:
        return results
    seen.add(id(obj))
    if isinstance(obj, torch.nn.Module):
        results.append(obj)
        return results
    children: list[Any]
    if isinstance(obj, list | tuple | set):
        children = list(obj)
    elif isinstance(obj, dict):
        children = list(obj.values())
    elif mod in (None, type(obj).__module__.split(".")[0]) and hasattr(obj, "__dict__"):
        mod = type(obj).__module__.split(".")[0]
        children = list(vars(obj).values())
    else:
        return results
    for child in children:
        get_torch_modules(child, mod, seen, results)
    return results


def random_input_from_plugin(plugin: ExtractPlugin, batch_size: int, channels_last: bool
                             ) -> np.ndarray:
    """Random model input shaped, typed and scaled as the plugin declares.

    Returns
    -------
    (batch_size, S, S, 3) when ``channels_last`` else (batch_size, 3, S, S), in the plugin's
    dtype, uniform over its value range.
    """
    size = plugin.input_size
    shape = (batch_size, size, size, 3) if channels_last else (batch_size, 3, size, size)
    rng = np.random.default_rng(0)
    low, high = plugin.scale
    if plugin.dtype == "uint8":
        return rng.integers(int(low), int(high) + 1, size=shape, dtype=np.uint8)
    return rng.uniform(low, high, size=shape).astype(plugin.dtype)


def warmup_plugin(plugin: ExtractPlugin, batch_size: int, channels_last: bool | None = None
                  ) -> bool | None:
    """Run a random batch through the plugin's ``process`` to warm it up.

    With ``channels_last`` None, a channels-first batch is tried first and a channels-last one
    if that fails.

    Returns
    -------
    True if the plugin took channels-last input, False for channels-first, None if neither
    worked.
    """
    orders = [False, True] if channels_last is None else [channels_last]
    for order in orders:
        try:
            plugin.process(random_input_from_plugin(plugin, batch_size, order))
        except Exception as err:  # noqa: BLE001 (a failed layout is an answer, not an error)
            logger.debug("Warm-up of '%s' with channels_last=%s failed: %s", plugin.name,
                         order, err)
            continue
        return order
    return None


def is_compiled(module: torch.nn.Module) -> bool:
    """True if ``module`` was compiled in place (``torch.nn.Module.compile``)."""
    return getattr(module, "_compiled_call_impl", None) is not None


def compile_models(plugin: ExtractPlugin, modules: list[torch.nn.Module],
                   fullgraph: bool = True) -> None:
    """Compile, in place, the torch modules of a plugin with ``torch.compile``.

    Shapes are static (``dynamic=False``): the handler pads short batches to the plugin's batch
    size, so each module compiles once, at its first call (the warm-up). A plugin feeding a
    module a varying batch marks that dimension dynamic itself (see mtcnn). Compiling is lazy:
    an error, a graph break under ``fullgraph`` among them, shows at the first call.

    Parameters
    ----------
    plugin:
        The plugin holding the modules.
    modules:
        Its torch modules, from :func:`get_torch_modules`.
    fullgraph:
        True to compile each module as one graph, raising at the first call where that cannot
        be done; False to allow graph breaks.
    """
    import torch._dynamo  # noqa: PLC0415

    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
    for module in modules:
        logger.debug("Compiling %s of plugin '%s' (fullgraph=%s)", type(module).__name__,
                     plugin.name, fullgraph)
        module.compile(fullgraph=fullgraph, dynamic=False)


def pad_batch(batch: np.ndarray, size: int) -> np.ndarray:
    """``batch`` (N, ...) with zero rows appended up to ``size`` rows (itself if N >= size)."""
    if len(batch) >= size:
        return batch
    padded = np.zeros((size, *batch.shape[1:]), dtype=batch.dtype)
    padded[:len(batch)] = batch
    return padded


def trim_output(output: Any, count: int, padded: int) -> Any:
    """The first ``count`` samples of a plugin's output for a batch padded to ``padded``.

    An array (padded, ...) is sliced. A list or tuple whose items are all arrays of
    ``padded`` rows holds parallel outputs: each is sliced. Any other list or tuple of
    ``padded`` items holds one item per sample: it is sliced. Anything else is returned as is.
    """
    if isinstance(output, np.ndarray):
        return output[:count] if output.ndim and len(output) == padded else output
    if isinstance(output, Sequence) and not isinstance(output, str | bytes):
        if output and all(isinstance(item, np.ndarray) and item.ndim and len(item) == padded
                          for item in output):
            trimmed = [item[:count] for item in output]
            return tuple(trimmed) if isinstance(output, tuple) else trimmed
        if len(output) == padded:
            return output[:count]
    return output
