"""The Identity stage: runs a face recognition plugin on aligned faces, stores L2-normalised
embeddings, and keeps or drops faces by their similarity to reference faces.

* :class:`Identity` is the stage handler. Its post-processing stores each face's embedding,
  L2-normalised, under the plugin's storage name, then applies its :class:`IdentityFilter`.
* :class:`IdentityFilter` compares embeddings by cosine similarity with reference embeddings: a
  face matches a set of references when its similarity to **any** of them is at least the
  threshold. ``filter`` keeps matching faces, ``nfilter`` drops them; with both, a face is kept
  when it matches the filter set and not the nfilter set.
* :class:`FilterLoader` turns reference image files and folders into reference embeddings.
* :class:`~faceinfer.cluster.Cluster` orders and bins embeddings (used to sort faces).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np
import numpy.typing as npt

from faceinfer.cluster import Cluster
from faceinfer.errors import ConfigError, PipelineError, PluginError
from faceinfer.formats.png import PNG_SIGNATURE, FaceMetadataError, PNGHeader, read_png_header
from faceinfer.handler import ExtractHandlerFace, HandlerType
from faceinfer.objects import DetectedFace, ExtractBatch
from faceinfer.plugins.base import IdentityPlugin

if TYPE_CHECKING:
    from faceinfer.runner import ExtractRunner

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_THRESHOLD", "IMAGE_EXTENSIONS", "Cluster", "FilterLoader", "Identity",
           "IdentityFilter", "l2_normalize"]

DEFAULT_THRESHOLD = 0.4
"""The reference handler's default similarity threshold."""
IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
"""The file extensions (lower case) that :class:`FilterLoader` reads as images."""

FilterType = Literal["filter", "nfilter"]


def l2_normalize(embeddings: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """(N, D) float32 embeddings scaled to unit length along D. Zero vectors stay zero."""
    values = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(values, axis=-1, keepdims=True)
    return np.asarray(values / np.where(norms > 0, norms, 1), dtype=np.float32)


def _check_threshold(threshold: float) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) \
            or not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"expected an identity threshold in [0, 1], got {threshold!r}")
    return float(threshold)


class IdentityFilter:
    """Keeps or drops a batch's faces by the cosine similarity of their embeddings to reference
    embeddings.

    A face matches a reference set when its similarity to any reference is at least
    ``threshold``. With filter references only, matching faces are kept; with nfilter references
    only, matching faces are dropped; with both, a face is kept when it matches the filter set
    and does not match the nfilter set.

    Counts (logged by :meth:`output_counts`): ``filter`` the faces that matched no filter
    reference, ``nfilter`` the faces that matched an nfilter reference, and, when both are
    active, ``combined`` the faces dropped in all (a face failing both is counted by each).

    Parameters
    ----------
    threshold:
        The cosine similarity, in [0, 1], at and above which a face matches a reference.
    name:
        The storage name of the identity plugin whose embeddings are compared.
    """

    def __init__(self, threshold: float, name: str) -> None:
        self.threshold = _check_threshold(threshold)
        """The similarity at and above which a face matches a reference."""
        self._name = name
        self._references: dict[FilterType, npt.NDArray[np.float32]] = {}
        self.counts: dict[str, int] = {"filter": 0, "nfilter": 0, "combined": 0}
        """How many faces each filter rejected, and in all when both are active."""

    def __repr__(self) -> str:
        sizes = {key: len(value) for key, value in self._references.items()}
        return f"IdentityFilter(threshold={self.threshold}, name={self._name!r}, refs={sizes})"

    @property
    def enabled(self) -> bool:
        """True if the filter holds any reference embeddings."""
        return bool(self._references)

    def add_identities(self, identities: npt.NDArray[np.float32], is_filter: bool) -> None:
        """Add reference embeddings, L2-normalised, to the filter (``is_filter``) or nfilter set.
        All-zero rows are not identities and are ignored.

        Parameters
        ----------
        identities:
            (N, D) or (D,) reference embeddings.
        is_filter:
            True for the filter set, False for the nfilter set.

        Raises
        ------
        ValueError
            If the embeddings are not (N, D) or (D,) finite numbers, or their D differs from
            the references already added.
        """
        values = np.asarray(identities, dtype=np.float32)
        if values.ndim == 1:
            values = values[None]
        if values.ndim != 2 or not values.shape[1] or not np.isfinite(values).all():
            raise ValueError(f"expected (N, D) finite reference embeddings, got {values.shape}")
        key: FilterType = "filter" if is_filter else "nfilter"
        for other in self._references.values():
            if other.shape[1] != values.shape[1]:
                raise ValueError(f"expected {other.shape[1]}-d reference embeddings like those "
                                 f"added before, got {values.shape[1]}-d")
        values = l2_normalize(values[np.any(values != 0, axis=1)])
        if not len(values):
            logger.warning("[Identity filter] No non-zero %s embedding to add", key)
            return
        logger.debug("[Identity filter] Adding %d %s embeddings", len(values), key)
        previous = self._references.get(key)
        self._references = {**self._references,
                            key: values if previous is None else np.concatenate([previous,
                                                                                 values])}

    def similarities(self, embeddings: npt.NDArray[np.float32], is_filter: bool
                     ) -> npt.NDArray[np.float32]:
        """(N,) each embedding's highest cosine similarity to the filter (``is_filter``) or
        nfilter references; -inf where there are none."""
        references = self._references.get("filter" if is_filter else "nfilter")
        values = l2_normalize(embeddings)
        if references is None or not len(values):
            return np.full(len(values), -np.inf, dtype=np.float32)
        if values.shape[1] != references.shape[1]:
            raise ValueError(f"identity filter: expected {references.shape[1]}-d '{self._name}' "
                             f"embeddings like the references, got {values.shape[1]}-d")
        return np.asarray((values @ references.T).max(axis=1), dtype=np.float32)

    def __call__(self, batch: ExtractBatch) -> None:
        """Drop the batch's faces that the filter rejects, counting them.

        Raises
        ------
        ValueError
            If the batch has no embeddings under the plugin's storage name, or they do not have
            the references' dimension.
        """
        references = self._references
        if not references or not batch.num_faces:
            return
        if self._name not in batch.identities:
            raise ValueError(f"identity filter: expected '{self._name}' embeddings in the "
                             f"batch, got {sorted(batch.identities)}")
        embeddings = batch.identities[self._name]
        keep = np.ones(batch.num_faces, dtype=np.bool_)
        for key in references:
            matches = self.similarities(embeddings, key == "filter") >= self.threshold
            passed = matches if key == "filter" else ~matches
            self.counts[key] += int(np.count_nonzero(~passed))
            keep &= passed
        if len(references) > 1:
            self.counts["combined"] += int(np.count_nonzero(~keep))
        if not keep.all():
            batch.apply_mask(keep)

    def output_counts(self) -> None:
        """Log, at info level, how many faces the filter rejected, when it is enabled."""
        active: list[str] = [key for key in ("filter", "nfilter") if key in self._references]
        if not active:
            return
        if len(active) > 1:
            active.append("combined")
        labels = {"filter": "Filter", "nfilter": "nFilter", "combined": "Combined"}
        logger.info("[Identity filter] Faces dropped (threshold %s): %s", self.threshold,
                    ", ".join(f"{labels[key]}: {self.counts[key]}" for key in active))


class Identity(ExtractHandlerFace):
    """Runs an identity plugin on batches of aligned faces, stores their L2-normalised embeddings
    under the plugin's storage name, and filters faces by identity when references are added.

    Parameters
    ----------
    plugin:
        The registered name of the identity plugin.
    threshold:
        The cosine similarity, in [0, 1], at and above which a face matches a filter reference.
        Default: 0.4, the reference's. None: the plugin's own measured
        :attr:`~faceinfer.plugins.base.IdentityPlugin.threshold`, or 0.4 if it has none.
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

    def __init__(self, plugin: str, threshold: float | None = DEFAULT_THRESHOLD,
                 compile_model: bool = False, config_file: str | None = None,
                 config: Mapping[str, Any] | None = None, device: str | None = None) -> None:
        super().__init__(plugin, compile_model, config_file, config, device)
        if not isinstance(self.plugin, IdentityPlugin):
            raise PluginError(f"expected an identity plugin for '{plugin}', "
                              f"got {type(self.plugin).__name__}")
        if threshold is None:
            own = self.plugin.threshold
            threshold = DEFAULT_THRESHOLD if own is None else own
        self._filter = IdentityFilter(threshold, self.storage_name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.plugin_name!r}, threshold={self.threshold})"

    @property
    def threshold(self) -> float:
        """The similarity threshold for filtering faces by identity."""
        return self._filter.threshold

    @property
    def identity_filter(self) -> IdentityFilter:
        """The filter applied to every batch after its embeddings are stored."""
        return self._filter

    def add_filter_identities(self, identities: npt.NDArray[np.float32], is_filter: bool
                              ) -> None:
        """Add reference embeddings to the identity filter: ``is_filter`` True for faces to
        keep, False for faces to drop."""
        self._filter.add_identities(identities, is_filter)

    def post_process(self, batch: ExtractBatch) -> None:
        """Store the plugin's embeddings, L2-normalised, under its storage name, then drop the
        faces the identity filter rejects."""
        embeddings = np.asarray(self.plugin.post_process(batch.data), dtype=np.float32)
        if embeddings.ndim != 2 or len(embeddings) != batch.num_faces:
            raise PluginError(f"identity plugin '{self.plugin_name}' must return (N, D) "
                              f"embeddings for {batch.num_faces} faces, got {embeddings.shape}")
        batch.identities[self.storage_name] = l2_normalize(embeddings)
        self._filter(batch)

    def output_info(self) -> None:
        """Log how many faces the identity filter dropped."""
        self._filter.output_counts()


def _image_files(paths: list[str] | None, kind: str) -> list[Path]:
    """The image files named by ``paths`` (files, or folders read one level deep), resolved,
    without repeats, in the order given (each folder's files sorted by name)."""
    found: dict[Path, None] = {}
    for given in paths or []:
        path = Path(given)
        if path.is_dir():
            files = sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                logger.warning("%s folder '%s' holds no image files (%s): skipping", kind, path,
                               " ".join(IMAGE_EXTENSIONS))
            found.update(dict.fromkeys(p.resolve() for p in files))
        elif not path.is_file():
            logger.warning("%s file '%s' does not exist: skipping", kind, path)
        elif path.suffix.lower() not in IMAGE_EXTENSIONS:
            logger.warning("%s file '%s' is not an image file (%s): skipping", kind, path,
                           " ".join(IMAGE_EXTENSIONS))
        else:
            found[path.resolve()] = None
    if paths and not found:
        raise ConfigError(f"none of the {kind} paths holds an image file: {', '.join(paths)}")
    return list(found)


class FilterLoader:
    """Reads reference faces from image files and folders, and gives their embeddings to the
    pipeline's :class:`Identity` filter.

    Each reference file gives its embeddings in one of three ways:

    * a faceinfer face PNG (see :mod:`faceinfer.formats.png`) whose metadata holds an embedding
      under the identity plugin's storage name: that embedding, with no model run;
    * a faceinfer face PNG without one: the identity runner alone (``put_direct``) on the
      aligned face, with the frame size and landmarks from its metadata;
    * any other image: the full pipeline, in passthrough mode.

    A filter image must hold exactly one face (else it is skipped with a warning naming the file
    and the count). An nfilter image gives all its faces. Unreadable files are skipped with a
    warning. A list of files that ends with no reference is an error.

    Parameters
    ----------
    threshold:
        The similarity threshold, kept for building the :class:`Identity` handler (None: the
        plugin's own).
    filter_files:
        Image files or folders of faces to keep, or None.
    nfilter_files:
        Image files or folders of faces to drop, or None.

    Raises
    ------
    ConfigError
        If the threshold is out of range, a list holds no image file, or a file is in both
        lists.
    """

    def __init__(self, threshold: float | None, filter_files: list[str] | None,
                 nfilter_files: list[str] | None) -> None:
        self.threshold = None if threshold is None else _check_threshold(threshold)
        """The similarity threshold for the identity filter (None: the plugin's own)."""
        self._files: dict[FilterType, list[Path]] = {
            "filter": _image_files(filter_files, "Filter"),
            "nfilter": _image_files(nfilter_files, "nFilter")}
        both = sorted(set(self._files["filter"]) & set(self._files["nfilter"]))
        if both:
            raise ConfigError("expected each reference file in only one of filter and nfilter, "
                              f"got both for: {', '.join(map(str, both))}")
        self._runner: ExtractRunner[Identity] | None = None

    @property
    def enabled(self) -> bool:
        """True if identity filtering is asked for."""
        return bool(self._files["filter"] or self._files["nfilter"])

    def add_identity_plugin(self, runner: ExtractRunner[Any]) -> None:
        """Set the pipeline's identity runner: its filter receives the references.

        Raises
        ------
        ValueError
            If the runner does not run an :class:`Identity` handler.
        """
        if not isinstance(runner.handler, Identity):
            raise ValueError(f"expected the runner of an Identity handler, got {runner!r}")
        self._runner = runner

    def get_embeddings(self, pipeline: ExtractRunner[Any]) -> None:
        """Compute the reference embeddings and add them to the identity runner's filter. Call
        once, before any frame is put into the pipeline.

        Parameters
        ----------
        pipeline:
            The extraction pipeline (its last runner), run in passthrough mode on plain images.
            It must include the identity runner.

        Raises
        ------
        PipelineError
            If no identity runner was added, or the pipeline gives no embeddings of its plugin.
        ConfigError
            If a list of files gives no usable reference, or references disagree in dimension.
        """
        if not self.enabled:
            return
        if self._runner is None:
            raise PipelineError("add_identity_plugin() must be called before get_embeddings()")
        handler = self._runner.handler
        found: dict[FilterType, list[npt.NDArray[np.float32]]] = {"filter": [], "nfilter": []}
        sources: list[tuple[Path, npt.NDArray[np.float32]]] = []
        keys: tuple[FilterType, ...] = ("filter", "nfilter")
        for key in keys:
            for path in self._files[key]:
                embeddings = self._embeddings(path, pipeline)
                if embeddings is not None and self._usable(path, embeddings, key):
                    found[key].append(embeddings)
                    sources.append((path, embeddings))
        dims = {int(e.shape[1]) for _, e in sources}
        if len(dims) > 1:
            listing = ", ".join(f"{path} ({e.shape[1]}-d)" for path, e in sources)
            raise ConfigError(f"expected reference embeddings of one dimension for "
                              f"'{handler.storage_name}', got: {listing}")
        for key in keys:
            kind = "Filter" if key == "filter" else "nFilter"
            if not self._files[key]:
                continue
            if not found[key]:
                raise ConfigError(f"no usable {kind} reference face in: "
                                  f"{', '.join(map(str, self._files[key]))}")
            embeddings = np.concatenate(found[key])
            logger.info("Identity %s: %d reference face(s) from %d file(s)", kind,
                        len(embeddings), len(found[key]))
            handler.add_filter_identities(embeddings, key == "filter")

    @staticmethod
    def _usable(path: Path, embeddings: npt.NDArray[np.float32], key: FilterType) -> bool:
        count = len(embeddings)
        if key == "filter" and count != 1:
            logger.warning("Filter file '%s' holds %d faces, expected exactly 1: skipping", path,
                           count)
            return False
        if not count:
            logger.warning("nFilter file '%s' holds no face: skipping", path)
            return False
        if count > 1:
            logger.info("nFilter file '%s' holds %d faces: using all of them", path, count)
        return True

    def _embeddings(self, path: Path, pipeline: ExtractRunner[Any]
                    ) -> npt.NDArray[np.float32] | None:
        """(N, D) the embeddings of the faces in one reference file, or None (with a warning)
        when the file cannot be read."""
        assert self._runner is not None
        storage = self._runner.handler.storage_name
        try:
            data = path.read_bytes()
            header = read_png_header(data, str(path)) if data.startswith(PNG_SIGNATURE) else None
        except (OSError, FaceMetadataError) as err:
            logger.warning("Cannot read reference file '%s': %s: skipping", path, err)
            return None
        if header is not None:
            stored = np.asarray(header["alignments"]["identity"].get(storage, []), np.float32)
            if stored.size and np.any(stored):
                logger.debug("[Identity filter] '%s': embedding from its metadata", path)
                return stored.reshape(1, -1)
        decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
        if decoded is None:
            logger.warning("Cannot decode reference image '%s': skipping", path)
            return None
        image = np.asarray(decoded, dtype=np.uint8)
        if header is not None:
            return self._from_identity_runner(path, image, header)
        logger.debug("[Identity filter] '%s': through the full pipeline", path)
        faces = pipeline.put(str(path), image, passthrough=True)
        count = len(faces.bboxes)
        if count and storage not in faces.identities:
            raise PipelineError(f"the pipeline given to get_embeddings() found {count} face(s) "
                                f"in '{path}' but no '{storage}' embeddings: it must include "
                                "the identity runner")
        return faces.identities[storage] if count else np.zeros((0, 0), np.float32)

    def _from_identity_runner(self, path: Path, image: npt.NDArray[np.uint8],
                              header: PNGHeader) -> npt.NDArray[np.float32] | None:
        """(1, D) the embedding of an aligned face PNG, from the identity runner alone."""
        assert self._runner is not None
        face = header["alignments"]
        dims = header["source"]["source_frame_dims"]
        if dims is None:
            logger.warning("Face PNG '%s' has no source frame size in its metadata: skipping",
                           path)
            return None
        points = np.asarray(face["landmarks_xy"], np.float32).reshape(-1, 2)
        detected = DetectedFace(face["x"], face["y"], face["w"], face["h"],
                                landmarks_xy=points if len(points) else None)
        logger.debug("[Identity filter] '%s': aligned face through the identity runner", path)
        result = self._runner.put_direct(os.fspath(path), image, [detected], is_aligned=True,
                                         frame_size=(int(dims[0]), int(dims[1])))
        return result.identities[self._runner.handler.storage_name]
