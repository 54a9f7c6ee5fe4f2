"""What an extraction writes for each source: the plan (its alignments file, its face folder, the
frames to skip) and the writer of its outputs, frame by frame.

Order of writes for one frame: its face PNGs, each written atomically, then its record appended
to the alignments file. A frame with a record therefore has all its faces on disk, and a resumed
run (``-s``) redoes only frames whose record never made it.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from faceinfer.app.face_images import (
    aligned_faces,
    draw_debug,
    source_sides,
    thumbnails,
    write_atomic,
)
from faceinfer.app.settings import ExtractSettings
from faceinfer.formats.alignments import (
    SCHEMA_VERSION,
    AlignmentsWriter,
    FrameRecord,
    load_alignments,
)
from faceinfer.formats.faceswap import (
    FSA_VERSION,
    add_faceswap_chunk,
    faceswap_frame_key,
    write_fsa,
)
from faceinfer.formats.png import PNGHeader, encode_face_png
from faceinfer.objects import FrameFaces
from faceinfer.sources import InputSource

__all__ = ["FrameWritten", "SourceOutput", "SourcePlan", "alignments_paths", "backup_path",
           "plan_source"]

logger = logging.getLogger(__name__)

_MIN_SIDE_PX = 4.0  # the reference's floor for -u/--min-scale


@dataclass(frozen=True)
class SourcePlan:
    """Where one source's results go and which of its frames to process."""

    source: InputSource
    """The video or image folder."""
    key: str
    """The source's key in the pipeline (``FrameFaces.source``)."""
    alignments: Path
    """faceinfer's alignments file for the source."""
    fsa: Path | None
    """faceswap's alignments file (with ``--format faceswap``), else None."""
    faces_dir: Path | None
    """Where its face PNGs go; None: not saved."""
    block: int
    """Frames per block: the frames kept by ``-N`` are grouped into blocks of this many (the
    detector's batch size) by their position, and no batch of any stage mixes two blocks."""
    skip: frozenset[str]
    """Names of frames already done (``-s``/``-e``)."""
    resume: bool
    """True to append to an existing alignments file; False to start a new one (an existing
    one is kept as a backup)."""
    frames_in_source: int
    """Frames (or images) in the source."""
    frames_kept: int
    """Frames left after ``-N``."""
    skipped: int
    """Frames of ``frames_kept`` skipped as already done."""

    @property
    def total(self) -> int:
        """Frames to process."""
        return self.frames_kept - self.skipped

    @property
    def to_read(self) -> bool:
        """True if the source is to be read: it has frames to process, or it counted none (a
        video that cannot be opened: reading it reports why)."""
        return self.total > 0 or not self.frames_in_source

    def block_of(self, index: int, every_n: int) -> int:
        """The block of the frame at ``index`` in the source."""
        return index // every_n // self.block


def alignments_paths(settings: ExtractSettings, source: InputSource) -> tuple[Path, Path | None]:
    """(faceinfer ``.fia`` file, faceswap ``.fsa`` file or None) for a source: from ``-p``
    (outside batch mode) or beside the input; the two share a name and differ in suffix."""
    given = None if settings.batch_mode else settings.alignments_path
    base = source.default_alignments_path() if given is None else given
    fia = base.with_suffix(".fia") if base.suffix.lower() == ".fsa" else base
    fsa = base.with_suffix(".fsa") if settings.output_format == "faceswap" else None
    return fia, fsa


def _done_blocks(names: list[str], done: frozenset[str], block: int) -> frozenset[str]:
    """The names in ``done`` whose whole block (of ``block`` consecutive kept frames) is done.

    A resumed run redoes the rest of a block that was cut short, so that each of its batches
    holds the same frames as in an uninterrupted run: a detector's results for a frame may
    differ in the last bits with the other frames of its batch (MTCNN pools their candidates),
    and an aligner can turn that into visible differences."""
    out: set[str] = set()
    for start in range(0, len(names), block):
        part = names[start:start + block]
        if all(name in done for name in part):
            out.update(part)
    return frozenset(out)


def plan_source(source: InputSource, settings: ExtractSettings, block: int) -> SourcePlan:
    """The plan of one source, for a detector batching ``block`` frames. With ``-s``/``-e``
    it reads the source's alignments file, if any, for the frames to skip: with ``-s`` the
    frames of whole blocks recorded there; with ``-e`` the frames recorded with a face.

    Raises
    ------
    AlignmentsError
        If that file cannot be read.
    """
    fia, fsa = alignments_paths(settings, source)
    count = source.frame_count()
    kept = range(0, count, settings.extract_every_n)
    skip: frozenset[str] = frozenset()
    skipped = 0
    resume = False
    if settings.skip_existing or settings.skip_existing_faces:
        if fia.is_file():
            existing = load_alignments(fia)
            resume = True
            names = [source.frame_name(index) for index in kept]
            if settings.skip_existing:
                skip = _done_blocks(names, frozenset(existing), block)
                redo = sum(1 for name in names if name in existing and name not in skip)
                if redo:
                    logger.info("%s: redoing %d recorded frames of a batch that was cut short",
                                fia, redo)
            else:
                skip = frozenset(name for name, record in existing.items() if len(record))
            skipped = sum(1 for name in names if name in skip)
            logger.info("%s: %d frames already done, skipped (%s)", fia, skipped,
                        "-s" if settings.skip_existing else "-e: frames with faces")
        else:
            logger.info("%s: no alignments file yet, nothing to skip", fia)
    faces_dir = settings.output_dir
    if faces_dir is not None and settings.batch_mode:
        faces_dir = faces_dir / source.name
    return SourcePlan(source=source, key=str(source.path), alignments=fia, fsa=fsa,
                      faces_dir=faces_dir, block=block, skip=skip, resume=resume,
                      frames_in_source=count, frames_kept=len(kept), skipped=skipped)


def backup_path(path: Path) -> Path:
    """A free name for a backup of ``path``: ``<stem>_bk_<YYYY-MM-DD_HH.MM.SS><suffix>`` (as the
    reference names them), with a counter if that exists too."""
    stamp = time.strftime("%Y-%m-%d_%H.%M.%S")
    candidate = path.with_name(f"{path.stem}_bk_{stamp}{path.suffix}")
    number = 1
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.stem}_bk_{stamp}_{number}{path.suffix}")
    return candidate


def _move_aside(path: Path | None, why: str) -> None:
    if path is None or not path.exists():
        return
    target = backup_path(path)
    path.rename(target)
    logger.warning("%s already exists: moved to %s (%s)", path, target, why)


@dataclass(frozen=True)
class FrameWritten:
    """What writing one frame did."""

    faces: int
    """Faces recorded."""
    saved: int
    """Face PNGs written."""
    not_saved: list[str]
    """Per face recorded but not saved: why."""


class SourceOutput:
    """Writes one source's face PNGs and alignments records. Opening it creates the face folder
    and opens the alignments file (appending when resuming; otherwise an existing file is moved
    aside as a backup first)."""

    def __init__(self, plan: SourcePlan, settings: ExtractSettings) -> None:
        self.plan = plan
        """The source's plan."""
        self._settings = settings
        self._faceswap = settings.output_format == "faceswap"
        self._min_side = (max(_MIN_SIDE_PX, settings.size * settings.min_scale / 100.0)
                          if settings.min_scale else 0.0)
        self._since_fsa = 0
        self._closed = False
        if plan.faces_dir is not None:
            plan.faces_dir.mkdir(parents=True, exist_ok=True)
            for stale in plan.faces_dir.glob(".*.png.*.tmp"):  # a crash mid-write left it
                stale.unlink(missing_ok=True)
        if not plan.resume:
            _move_aside(plan.alignments, "use -s to resume a run instead")
            _move_aside(plan.fsa, "a new run")
        plan.alignments.parent.mkdir(parents=True, exist_ok=True)
        self._writer = AlignmentsWriter(plan.alignments, meta={
            "settings": settings.as_dict(),
            "source": {"path": str(plan.source.path), "name": plan.source.name,
                       "is_video": plan.source.is_video,
                       "frame_count": plan.frames_in_source}})
        logger.info("%s: alignments to %s%s", plan.source.path, plan.alignments,
                    "" if plan.faces_dir is None else f", faces to {plan.faces_dir}")

    @property
    def paths(self) -> list[Path]:
        """The alignments files this output writes."""
        return [self.plan.alignments] + ([] if self.plan.fsa is None else [self.plan.fsa])

    def _frame_stem(self, name: str) -> str:
        return name if self.plan.source.is_video else Path(name).stem

    def _save_face(self, record: FrameRecord, index: int, image: np.ndarray) -> None:
        """Write face ``index`` as ``<frame stem>_<index>.png`` with faceinfer's header, and
        faceswap's too with the faceswap format (faceswap reads its own, faceinfer its own)."""
        plan = self.plan
        assert plan.faces_dir is not None
        file_name = f"{self._frame_stem(record.name)}_{index}.png"
        header: PNGHeader = {
            "alignments": record.png_alignments(index),
            "source": {
                "alignments_version": float(SCHEMA_VERSION), "original_filename": file_name,
                "face_index": index, "source_filename": record.name,
                "source_is_video": plan.source.is_video,
                "source_frame_dims": record.frame_size}}
        data = encode_face_png(image, header)
        if self._faceswap:
            video_extension = plan.source.path.suffix if plan.source.is_video else None
            theirs: PNGHeader = {"alignments": header["alignments"], "source": {
                **header["source"], "alignments_version": FSA_VERSION,
                "source_filename": faceswap_frame_key(record.name, video_extension)}}
            data = add_faceswap_chunk(data, theirs)
        write_atomic(plan.faces_dir / file_name, data)

    def write(self, media: FrameFaces) -> FrameWritten:
        """Write one frame that came out of the pipeline: its face PNGs, then its record."""
        settings = self._settings
        count = len(media.bboxes)
        aligned = count > 0 and media.landmarks is not None
        record = FrameRecord.from_frame_faces(media, media.filename, self.plan.source.name,
                                              thumbnails(media) if aligned else [b""] * count)
        saved = 0
        not_saved: list[str] = []
        if self.plan.faces_dir is not None and count:
            if not aligned:
                not_saved = ["without landmarks"] * count
            else:
                images, matrices = aligned_faces(media, settings.size, settings.centering)
                if settings.debug_landmarks:
                    images = draw_debug(images, media.aligned, matrices)
                sides = source_sides(media.aligned)
                for index in range(count):
                    if not np.isfinite(matrices[index]).all():
                        not_saved.append("without a usable alignment")
                    elif sides[index] < self._min_side:
                        not_saved.append(f"smaller than -u/--min-scale {settings.min_scale}% "
                                         f"({self._min_side:.0f} px in the frame)")
                    else:
                        self._save_face(record, index, images[index])
                        saved += 1
        self._writer.write(record)
        if self.plan.fsa is not None and settings.save_interval:
            self._since_fsa += 1
            if self._since_fsa >= settings.save_interval:
                self._write_fsa()
        return FrameWritten(count, saved, not_saved)

    def _write_fsa(self) -> None:
        """Rewrite the ``.fsa`` from everything in the ``.fia`` (earlier runs included)."""
        assert self.plan.fsa is not None
        self._since_fsa = 0
        source = self.plan.source
        write_fsa(self.plan.fsa, load_alignments(self.plan.alignments).values(),
                  video_extension=source.path.suffix if source.is_video else None)

    def close(self) -> None:
        """Close the alignments file (fsync) and, with the faceswap format, write the
        ``.fsa``. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        if self.plan.fsa is not None:
            self._write_fsa()
            logger.info("Wrote %s", self.plan.fsa)
