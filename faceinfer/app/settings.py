"""The settings of an extraction: every option of ``faceinfer extract``, typed, with the
reference's ranges and defaults, checked on construction so that a bad value or combination is
refused, naming its command-line flag, before any work starts."""
from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from faceinfer._registry import get_plugin
from faceinfer.align import NormalizationType
from faceinfer.errors import ConfigError, PluginError
from faceinfer.geometry.constants import Centering
from faceinfer.plugins.base import PluginType

__all__ = ["ExtractSettings", "OutputFormat"]

OutputFormat = Literal["faceinfer", "faceswap"]
"""faceinfer: face PNGs with faceinfer's JSON header and the ``.fia`` alignments file only.
faceswap: face PNGs with faceswap's header, and a faceswap ``.fsa`` beside the ``.fia``."""

_NORMALIZATIONS = ("none", "clahe", "hist", "mean")
_FORMATS = ("faceinfer", "faceswap")
_SIZE_RANGE = (256, 1024, 64)
_INT_RANGES: dict[str, tuple[int, int | None, str]] = {
    "min_size": (0, 100, "-m/--min-size"),
    "max_size": (0, 500, "-x/--max-size"),
    "re_feed": (0, 10, "-R/--re-feed"),
    "extract_every_n": (1, None, "-N/--extract-every-n"),
    "min_scale": (0, 200, "-u/--min-scale"),
    "save_interval": (0, None, "-v/--save-interval"),
}


def _check_int(value: object, low: int, high: int | None, flag: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{flag}: expected a whole number, got {value!r}")
    if value < low or (high is not None and value > high):
        span = f"{low} to {high}" if high is not None else f"{low} or more"
        raise ConfigError(f"{flag}: expected {span}, got {value}")
    return value


def _check_plugin(kind: PluginType, name: object, flag: str) -> str:
    if not isinstance(name, str):
        raise ConfigError(f"{flag}: expected a plugin name, got {name!r}")
    try:
        get_plugin(kind, name)
    except PluginError as err:
        raise ConfigError(f"{flag}: {err}") from None
    return name


@dataclass(frozen=True)
class ExtractSettings:
    """Every option of an extraction, checked on construction (:class:`ConfigError` naming the
    option and its command-line flag). Ranges and defaults follow the reference's extract
    command; re-align is on by default (it measured neutral-to-better and gives each face an
    alignment score)."""

    input_path: Path
    """``-i``: a video file, a folder of images, or with ``batch_mode`` a folder of videos and
    image folders."""
    output_dir: Path | None = None
    """``-o``: where face PNGs go; None writes the alignments file only."""
    batch_mode: bool = False
    """``-b``: one source per video and image folder in ``input_path``; each gets its own
    alignments file beside it and its faces in ``output_dir/<source name>/``."""
    detector: str = "mtcnn"
    """``-D``: the detector plugin."""
    aligner: str = "dlib-68"
    """``-A``: the aligner plugin."""
    maskers: tuple[str, ...] = ()
    """``-M``: mask plugins, run in this order."""
    identities: tuple[str, ...] = ()
    """``-I``: identity plugins; the first filters when filter images are given."""
    min_size: int = 0
    """``-m``: drop faces smaller than this percentage of the frame's shorter side (0: off)."""
    max_size: int = 0
    """``-x``: drop faces larger than this percentage of the frame's shorter side (0: off)."""
    rotation: str | None = None
    """``-r``: angles to retry detection at where nothing was found (``"90"``: every 90
    degrees; ``"30,330"``: those angles)."""
    normalization: NormalizationType = "none"
    """``-O``: the aligner's input normalization: none, clahe, hist or mean."""
    re_feed: int = 0
    """``-R``: extra jittered aligner passes, averaged (0 to 10)."""
    re_align: bool = True
    """``-a``/``--no-re-align``: align a second time from an upright crop."""
    align_filters: bool = False
    """``-g``: drop faces whose landmarks fail the aligner filters."""
    filter_files: tuple[Path, ...] = ()
    """``-f``: images (or folders) of the people to keep."""
    nfilter_files: tuple[Path, ...] = ()
    """``-n``: images (or folders) of the people to drop."""
    threshold: float | None = None
    """``-l``: the identity filter's similarity threshold (0.01 to 0.99); None: the identity
    plugin's own measured one."""
    size: int = 512
    """``-z``: the side of the saved faces in pixels (256 to 1024, a multiple of 64)."""
    centering: Centering = Centering.HEAD
    """``--centering``: where the saved faces are centred: head, face or legacy."""
    extract_every_n: int = 1
    """``-N``: process every n-th frame only; the others are not recorded."""
    min_scale: int = 0
    """``-u``: save a face's PNG only if its face-centred crop in the frame is at least this
    percentage of ``size`` (at least 4 px); the face is still recorded (0: off)."""
    save_interval: int = 0
    """``-v``: with the faceswap format, rewrite the ``.fsa`` every this many frames (0: at the
    end only). faceinfer's own file is written frame by frame anyway."""
    skip_existing: bool = False
    """``-s``: skip the frames already in the alignments file (resume)."""
    skip_existing_faces: bool = False
    """``-e``: skip the frames that already have at least one face in the alignments file."""
    debug_landmarks: bool = False
    """``-B``: draw landmarks, crop outlines and pose on the saved faces."""
    compile_models: bool = False
    """``-c``: compile the plugins' torch models."""
    profile: bool = False
    """``-k``: choose the torch plugins' batch sizes with the profiler before extracting."""
    profile_warmup: float = 2.0
    """``--profile-warmup``: seconds of warm-up at each profiling step (0 to 60)."""
    profile_time: float = 10.0
    """``--profile-time``: seconds measured at each profiling step (more than 0, up to 600)."""
    profile_save: bool = False
    """``--profile-save``: write the profiled batch sizes into the config file (``-C``)."""
    alignments_path: Path | None = None
    """``-p``: the alignments file (``.fia``, or ``.fsa`` with the faceswap format); None: beside
    the input. Ignored in batch mode."""
    config_file: Path | None = None
    """``-C``: a TOML file of per-plugin settings (``[detect.mtcnn]`` ...)."""
    device: str = "auto"
    """``--device``: auto, cpu, cuda or cuda:N."""
    output_format: OutputFormat = "faceinfer"
    """``--format``: faceinfer, or faceswap (faceswap's PNG header and a ``.fsa`` as well)."""
    show_progress: bool = True
    """Show a progress bar on a terminal (periodic log lines elsewhere); False: neither."""

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        put("input_path", Path(self.input_path))
        for name in ("output_dir", "alignments_path", "config_file"):
            value = getattr(self, name)
            put(name, None if value is None or value == "" else Path(value))
        for name in ("filter_files", "nfilter_files"):
            put(name, tuple(Path(item) for item in getattr(self, name)))
        for name, (low, high, flag) in _INT_RANGES.items():
            _check_int(getattr(self, name), low, high, flag)
        low, high, step = _SIZE_RANGE
        _check_int(self.size, low, high, "-z/--size")
        if self.size % step:
            raise ConfigError(f"-z/--size: expected a multiple of {step}, got {self.size}")
        self._check_choices()
        self._check_plugins()
        self._check_combinations()

    def _check_choices(self) -> None:
        if self.normalization not in _NORMALIZATIONS:
            raise ConfigError(f"-O/--normalization: expected one of {', '.join(_NORMALIZATIONS)}"
                              f", got {self.normalization!r}")
        if self.output_format not in _FORMATS:
            raise ConfigError(f"--format: expected one of {', '.join(_FORMATS)}, got "
                              f"{self.output_format!r}")
        try:
            object.__setattr__(self, "centering", Centering(self.centering))
        except ValueError:
            raise ConfigError(f"--centering: expected one of head, face, legacy, got "
                              f"{self.centering!r}") from None
        if self.threshold is not None and (isinstance(self.threshold, bool) or not isinstance(
                self.threshold, int | float) or not 0.01 <= self.threshold <= 0.99):
            raise ConfigError(f"-l/--ref-threshold: expected 0.01 to 0.99, got "
                              f"{self.threshold!r}")
        if self.rotation is not None and not isinstance(self.rotation, str):
            raise ConfigError(f"-r/--rotate-images: expected text such as '90' or '30,330', "
                              f"got {self.rotation!r}")

    def _check_plugins(self) -> None:
        _check_plugin("detect", self.detector, "-D/--detector")
        _check_plugin("align", self.aligner, "-A/--aligner")
        for kind, name, flag in (("mask", "maskers", "-M/--masker"),
                                 ("identity", "identities", "-I/--identity")):
            names = tuple(getattr(self, name))
            object.__setattr__(self, name, names)
            for plugin in names:
                _check_plugin(kind, plugin, flag)  # type: ignore[arg-type]  # literal kinds
            repeated = sorted(plugin for plugin, count in Counter(names).items() if count > 1)
            if repeated:
                raise ConfigError(f"{flag}: expected each plugin once, got {', '.join(repeated)}"
                                  " more than once")

    def _check_combinations(self) -> None:
        for value, low, high, flag in ((self.profile_warmup, 0.0, 60.0, "--profile-warmup"),
                                       (self.profile_time, 0.0, 600.0, "--profile-time")):
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                    low <= value <= high) or (flag == "--profile-time" and value == 0):
                raise ConfigError(f"{flag}: expected seconds {'above' if value == 0 else 'from'}"
                                  f" {low:g} to {high:g}, got {value!r}")
        if self.profile_save and not self.profile:
            raise ConfigError("--profile-save saves the profiler's batch sizes: add -k/--benchmark")
        if self.profile_save and self.config_file is None:
            raise ConfigError("--profile-save writes into the config file: name it with -C")
        if self.max_size and self.min_size > self.max_size:
            raise ConfigError(f"-m/--min-size {self.min_size} is above -x/--max-size "
                              f"{self.max_size}: no face could be kept")
        if self.output_dir is None:
            for wanted, flag in ((self.min_scale, "-u/--min-scale"),
                                 (self.debug_landmarks, "-B/--debug-landmarks")):
                if wanted:
                    raise ConfigError(f"{flag} applies to saved faces, but no output folder "
                                      "(-o) was given")
        elif self.output_dir.resolve() == self.input_path.resolve():
            raise ConfigError(f"-o/--output-dir {self.output_dir} is the input folder: the "
                              "faces would be read as input next time; choose another folder")
        path = self.alignments_path
        if path is not None:
            suffix = path.suffix.lower()
            if suffix not in (".fia", ".fsa"):
                raise ConfigError(f"-p/--alignments {path}: expected a .fia file (or .fsa with "
                                  f"--format faceswap), got '{path.suffix}'")
            if suffix == ".fsa" and self.output_format != "faceswap":
                raise ConfigError(f"-p/--alignments {path} names a faceswap .fsa file: add "
                                  "--format faceswap, or name a .fia file")

    def as_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready values (paths as text), as stored in the alignments
        file's metadata."""
        out: dict[str, Any] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = [str(part) for part in value]
            elif isinstance(value, Centering):
                value = value.value
            out[item.name] = value
        return out
