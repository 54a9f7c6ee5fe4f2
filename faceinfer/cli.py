"""The ``faceinfer`` command line: a thin layer over the library.

* ``faceinfer extract -i INPUT [-o OUTPUT_DIR] [options]``: :func:`faceinfer.app.extract`;
* ``faceinfer plugins``: the registered plugins;
* ``faceinfer alignments import FILE.fsa [-o OUT.fia]``: convert a faceswap alignments file.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from faceinfer._registry import get_plugin, list_plugins
from faceinfer._version import __version__
from faceinfer.errors import FaceInferError
from faceinfer.plugins.base import PLUGIN_TYPES, AlignPlugin, FacePlugin, IdentityPlugin

logger = logging.getLogger("faceinfer")

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_INTERRUPTED = 130


# ------------------------------------------------------------------------------------- plugins
def _plugins(args: argparse.Namespace) -> int:
    """List the registered plugins."""
    rows: list[tuple[str, str, str, str, str]] = []
    for kind in PLUGIN_TYPES:
        for name in list_plugins(kind, include_test=args.all):
            cls = get_plugin(kind, name)
            if issubclass(cls, AlignPlugin):
                output = f"landmarks {cls.landmark_type.name}"
            elif issubclass(cls, IdentityPlugin):
                output = f"embeddings ({cls.centering.value} centering)"
            elif issubclass(cls, FacePlugin):
                output = f"mask ({cls.centering.value} centering)"
            else:
                output = "boxes"
            rows.append((kind, name, cls.speed, output, cls.description))
    if not rows:
        print("No plugins registered yet (test plugins: faceinfer plugins --all).")
        return 0
    rows.insert(0, ("TYPE", "NAME", "SPEED", "OUTPUT", "DESCRIPTION"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=False))
              + "  " + row[4])
    return 0


# ------------------------------------------------------------------------------------- extract
class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default only when it says something (not None, False or empty)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, [], argparse.SUPPRESS) or "default:" in (
                action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _plugin_help(kind: str, what: str, default: str | None = None) -> str:
    names = ", ".join(list_plugins(kind))  # type: ignore[arg-type]  # one of PLUGIN_TYPES
    suffix = f" (default: {default})" if default else ""
    return f"{what}: one of {names}{suffix}"


def _add_extract(commands: argparse._SubParsersAction[argparse.ArgumentParser],
                 common: argparse.ArgumentParser) -> None:
    extract = commands.add_parser(
        "extract", parents=[common], help="find, align and save the faces of videos and images",
        description=(
            "Find the faces in a video or a folder of images, save each as an aligned PNG "
            "carrying its metadata, and record every frame in an alignments file. The "
            "alignments file is written frame by frame: after a crash or Ctrl-C, run the same "
            "command with -s to go on where it stopped."),
        formatter_class=_HelpFormatter)
    extract.set_defaults(func=_extract)
    data = extract.add_argument_group("input and output")
    data.add_argument("-i", "--input", "--input-dir", dest="input", required=True,
                      help="a video file, a folder of images, or with -b a folder of videos "
                      "and image folders")
    data.add_argument("-o", "--output-dir", dest="output_dir", default=None, metavar="DIR",
                      help="folder for the face PNGs; without it only the alignments file is "
                      "written")
    data.add_argument("-b", "--batch-mode", action="store_true",
                      help="INPUT holds several videos and/or image folders: one alignments "
                      "file beside each, faces in OUTPUT_DIR/<name>/")
    data.add_argument("-p", "--alignments", dest="alignments_path", default=None,
                      metavar="FILE",
                      help="the alignments file (default: beside the input: "
                      "<folder>/alignments.fia or <video dir>/<video stem>_alignments.fia); "
                      "ignored with -b")
    data.add_argument("--format", dest="output_format", choices=("faceinfer", "faceswap"),
                      default="faceinfer", help="faceswap: faceswap's PNG header on the faces "
                      "and a faceswap .fsa alignments file beside faceinfer's .fia")
    data.add_argument("-s", "--skip-existing", action="store_true",
                      help="skip the frames already in the alignments file (resume a run)")
    data.add_argument("-e", "--skip-existing-faces", action="store_true",
                      help="skip the frames that already have a face in the alignments file")
    data.add_argument("-N", "--extract-every-n", type=int, default=1, metavar="N",
                      help="process every N-th frame only; the others are not recorded")
    data.add_argument("-v", "--save-interval", type=int, default=0, metavar="N",
                      help="with --format faceswap, rewrite the .fsa every N frames (0: at the "
                      "end); the .fia is saved frame by frame regardless")
    plugins = extract.add_argument_group("plugins")
    plugins.add_argument("-D", "--detector", default="mtcnn",
                         help=_plugin_help("detect", "face detector"))
    plugins.add_argument("-A", "--aligner", default="dlib-68",
                         help=_plugin_help("align", "landmark aligner"))
    plugins.add_argument("-M", "--masker", dest="maskers", nargs="+", action="extend",
                         default=[], metavar="MASKER",
                         help=_plugin_help("mask", "mask plugins, one or more"))
    plugins.add_argument("-I", "--identity", dest="identities", nargs="+", action="extend",
                         default=[], metavar="IDENTITY",
                         help=_plugin_help("identity", "identity plugins, one or more (the "
                                           "first one filters with -f/-n)"))
    plugins.add_argument("-C", "--configfile", "--config", dest="config_file", default=None,
                         metavar="FILE",
                         help="TOML file of per-plugin settings, e.g. [detect.mtcnn] "
                         "batch_size = 8")
    plugins.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    plugins.add_argument("-c", "--compile", dest="compile_models", action="store_true",
                         help="compile the torch models (slower start, faster run)")
    plugins.add_argument("-k", "--benchmark", "--profile", dest="profile", action="store_true",
                         help="choose the torch plugins' batch sizes by measuring them first")
    plugins.add_argument("--profile-warmup", type=float, default=2.0, metavar="SECONDS",
                         help="with -k: warm-up at each profiling step (default: 2)")
    plugins.add_argument("--profile-time", type=float, default=10.0, metavar="SECONDS",
                         help="with -k: time measured at each profiling step (default: 10)")
    plugins.add_argument("--profile-save", action="store_true",
                         help="with -k: save the batch sizes into the config file (-C)")
    detect = extract.add_argument_group("detection and alignment")
    detect.add_argument("-m", "--min-size", type=int, default=0, metavar="PERCENT",
                        help="drop faces smaller than this %% of the frame's shorter side")
    detect.add_argument("-x", "--max-size", type=int, default=0, metavar="PERCENT",
                        help="drop faces larger than this %% of the frame's shorter side "
                        "(0: no limit)")
    detect.add_argument("-r", "--rotate-images", dest="rotation", default=None,
                        metavar="ANGLES",
                        help="where no face is found, try again rotated: '90' every 90 "
                        "degrees, '30,330' those angles")
    detect.add_argument("-O", "--normalization", choices=("none", "clahe", "hist", "mean"),
                        default="none", help="normalize the aligner's input")
    detect.add_argument("-R", "--re-feed", type=int, default=0, metavar="N",
                        help="extra jittered aligner passes, averaged (0 to 10)")
    detect.add_argument("-a", "--re-align", action=argparse.BooleanOptionalAction, default=True,
                        help="align a second time from an upright crop (better landmarks and "
                        "a per-face score)")
    detect.add_argument("-g", "--align-filters", action="store_true",
                        help="drop faces whose landmarks fail the aligner filters")
    faces = extract.add_argument_group("identity filter")
    faces.add_argument("-f", "--filter", dest="filter_files", nargs="+", action="extend",
                       default=[], metavar="IMAGE",
                       help="images or folders of the people to keep (adds -I dlib-resnet "
                       "when no -I is given)")
    faces.add_argument("-n", "--nfilter", dest="nfilter_files", nargs="+", action="extend",
                       default=[], metavar="IMAGE",
                       help="images or folders of the people to leave out")
    faces.add_argument("-l", "--ref-threshold", "--ref_threshold", dest="threshold",
                       type=float, default=None, metavar="SIMILARITY",
                       help="similarity threshold for -f/-n, 0.01 to 0.99 (default: the "
                       "identity plugin's own)")
    saved = extract.add_argument_group("saved faces")
    saved.add_argument("-z", "--size", type=int, default=512, metavar="PX",
                       help="side of the saved faces in pixels (256 to 1024, multiple of 64)")
    saved.add_argument("--centering", choices=("head", "face", "legacy"), default="head",
                       help="where the saved faces are centred")
    saved.add_argument("-u", "--min-scale", type=int, default=0, metavar="PERCENT",
                       help="save a face only if it covers at least this %% of -z in the "
                       "frame; it is still recorded (0 to 200)")
    saved.add_argument("-B", "--debug-landmarks", action="store_true",
                       help="draw landmarks, crop outlines and pose on the saved faces")


def _extract(args: argparse.Namespace) -> int:
    """Run an extraction and print its summary."""
    from faceinfer.app import Extraction, ExtractSettings  # noqa: PLC0415 (loads torch)
    from faceinfer.app.allocator import tune_allocator  # noqa: PLC0415

    tune_allocator()  # this process is ours: keep big freed blocks for the next batch
    settings = ExtractSettings(
        input_path=Path(args.input), output_dir=args.output_dir,
        batch_mode=args.batch_mode, detector=args.detector, aligner=args.aligner,
        maskers=tuple(args.maskers), identities=tuple(args.identities),
        min_size=args.min_size, max_size=args.max_size, rotation=args.rotation,
        normalization=args.normalization, re_feed=args.re_feed, re_align=args.re_align,
        align_filters=args.align_filters, filter_files=tuple(args.filter_files),
        nfilter_files=tuple(args.nfilter_files), threshold=args.threshold, size=args.size,
        centering=args.centering, extract_every_n=args.extract_every_n,
        min_scale=args.min_scale, save_interval=args.save_interval,
        skip_existing=args.skip_existing, skip_existing_faces=args.skip_existing_faces,
        debug_landmarks=args.debug_landmarks, compile_models=args.compile_models,
        profile=args.profile, profile_warmup=args.profile_warmup,
        profile_time=args.profile_time, profile_save=args.profile_save,
        alignments_path=args.alignments_path,
        config_file=args.config_file, device=args.device, output_format=args.output_format)
    run = Extraction(settings)
    try:
        summary = run.run()
    except KeyboardInterrupt:
        run.summary.interrupted = True
        print("\n".join(run.summary.lines()))
        return _INTERRUPTED
    except FaceInferError:
        if run.summary.frames_processed:
            print("\n".join(run.summary.lines()))
        raise
    print("\n".join(summary.lines()))
    return summary.exit_code


# ---------------------------------------------------------------------------------- alignments
def _import_fsa(args: argparse.Namespace) -> int:
    """Convert a faceswap .fsa file into faceinfer's format."""
    from faceinfer.formats.faceswap import import_fsa  # noqa: PLC0415 (numpy, pickle)

    source = Path(args.file)
    target = Path(args.output) if args.output else source.with_suffix(".fia")
    if target.exists():
        raise FaceInferError(f"{target} already exists: remove it or name another file with -o")
    frames = import_fsa(source, target)
    print(f"Imported {frames} frames from {source} into {target}")
    return 0


def _add_alignments(commands: argparse._SubParsersAction[argparse.ArgumentParser],
                    common: argparse.ArgumentParser) -> None:
    tools = commands.add_parser("alignments", parents=[common],
                                help="work with alignments files")
    actions = tools.add_subparsers(dest="action", metavar="ACTION", required=True)
    convert = actions.add_parser(
        "import", parents=[common], help="convert a faceswap .fsa file into a faceinfer .fia",
        description="Read a faceswap alignments file (.fsa) with a restricted loader that "
        "accepts only plain containers, numbers, strings and bytes, and write it in faceinfer's "
        "format.")
    convert.add_argument("file", help="the faceswap .fsa file")
    convert.add_argument("-o", "--output", default=None,
                         help="the .fia file to write (default: FILE with the .fia suffix)")
    convert.set_defaults(func=_import_fsa)


# ---------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``faceinfer`` command."""
    parser = argparse.ArgumentParser(prog="faceinfer", description=(
        "Extract faces from images and video: detect, align, mask and embed them with a "
        "parallel, batched pipeline."))
    parser.add_argument("--version", action="version", version=f"faceinfer {__version__}")
    parser.add_argument("-L", "--loglevel", default="INFO", choices=_LOG_LEVELS,
                        help="log level")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-L", "--loglevel", default=argparse.SUPPRESS, choices=_LOG_LEVELS,
                        help="log level (default: INFO)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_extract(commands, common)
    listing = commands.add_parser("plugins", parents=[common],
                                  help="list the registered plugins")
    listing.add_argument("--all", action="store_true", help="include the test plugins")
    listing.set_defaults(func=_plugins)
    _add_alignments(commands, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.loglevel, format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args))
    except FaceInferError as err:
        logger.error("%s", err)
        return 1


if __name__ == "__main__":
    sys.exit(main())
