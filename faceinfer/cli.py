"""The ``faceinfer`` command line: a thin layer over the library."""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from faceinfer import __version__
from faceinfer._registry import get_plugin, list_plugins
from faceinfer.errors import FaceInferError
from faceinfer.plugins.base import PLUGIN_TYPES, AlignPlugin, FacePlugin

logger = logging.getLogger("faceinfer")


def _plugins(args: argparse.Namespace) -> int:
    """List the registered plugins."""
    rows = []
    for kind in PLUGIN_TYPES:
        for name in list_plugins(kind, include_test=args.all):
            cls = get_plugin(kind, name)
            if issubclass(cls, AlignPlugin):
                output = cls.landmark_type.name
            elif issubclass(cls, FacePlugin):
                output = f"{kind} ({cls.centering.value} centering)"
            else:
                output = "boxes"
            rows.append((kind, name, cls.speed, output, cls.description))
    if not rows:
        print("No plugins registered yet (test plugins: faceinfer plugins --all).")
        return 0
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=False))
              + "  " + row[4])
    return 0


def _demo(args: argparse.Namespace) -> int:
    """Run the demo."""
    from faceinfer.demo import run_demo  # noqa: PLC0415 (decoding video is only for the demo)

    return run_demo(args.input, args.output)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``faceinfer`` command."""
    parser = argparse.ArgumentParser(prog="faceinfer", description=(
        "Extract faces from images and video: detect, align, mask and embed them with a "
        "parallel, batched pipeline."))
    parser.add_argument("--version", action="version", version=f"faceinfer {__version__}")
    parser.add_argument("-L", "--loglevel", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log level")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    listing = commands.add_parser("plugins", help="list the registered plugins")
    listing.add_argument("--all", action="store_true", help="include the test plugins")
    listing.set_defaults(func=_plugins)
    demo = commands.add_parser("demo", help=(
        "find the faces and 68-point landmarks of every frame of a video (mtcnn -> dlib-68) "
        "and write them as JSON lines, with the first frames drawn as PNG"))
    demo.add_argument("-i", "--input", required=True, help="a video file")
    demo.add_argument("-o", "--output", required=True, help="folder for the demo's results")
    demo.set_defaults(func=_demo)
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
