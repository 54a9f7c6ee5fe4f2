"""The Identity stage: runs a face recognition plugin on aligned faces and stores embeddings."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from faceinfer.errors import ConfigError, PluginError
from faceinfer.handler import ExtractHandlerFace, HandlerType
from faceinfer.objects import ExtractBatch
from faceinfer.plugins.base import IdentityPlugin


class Identity(ExtractHandlerFace):
    """Runs an identity plugin on batches of aligned faces.

    Parameters
    ----------
    plugin:
        The registered name of the identity plugin.
    threshold:
        The similarity threshold for filtering faces by identity. Default: 0.4.
    compile_model:
        True to compile the plugin's torch modules.
    config_file:
        A TOML config file with per-plugin settings, or None.
    config:
        Settings overriding the config file.
    device:
        Where torch plugins run: auto, cpu, cuda or cuda:N.
    """

    plugin_type: HandlerType = "identity"
    plugin: IdentityPlugin

    def __init__(self, plugin: str, threshold: float = 0.4, compile_model: bool = False,
                 config_file: str | None = None, config: Mapping[str, Any] | None = None,
                 device: str | None = None) -> None:
        super().__init__(plugin, compile_model, config_file, config, device)
        if not isinstance(self.plugin, IdentityPlugin):
            raise PluginError(f"expected an identity plugin for '{plugin}', "
                              f"got {type(self.plugin).__name__}")
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"expected an identity threshold in [0, 1], got {threshold}")
        self.threshold = threshold
        """The similarity threshold for filtering faces by identity."""

    def post_process(self, batch: ExtractBatch) -> None:
        """Store the plugin's embeddings under its storage name."""
        embeddings = np.asarray(self.plugin.post_process(batch.data), dtype=np.float32)
        if embeddings.ndim != 2 or len(embeddings) != batch.num_faces:
            raise PluginError(f"identity plugin '{self.plugin_name}' must return (N, D) "
                              f"embeddings for {batch.num_faces} faces, got {embeddings.shape}")
        batch.identities[self.storage_name] = embeddings
