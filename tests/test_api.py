"""The public API against the reference contract (../shared/spec/check_api.py), the package's
exports, and the command line."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import faceinfer
from tests.conftest import SHARED

CHECK_API = SHARED / "spec" / "check_api.py"
COMPLETE_MODULES = ("objects", "iterator", "runner", "handler", "plugin_utils", "detect", "align",
                    "mask", "identity", "profile")


@pytest.mark.skipif(not CHECK_API.is_file(), reason=f"{CHECK_API} not found (../shared absent)")
def test_every_member_of_the_complete_modules_is_present() -> None:
    result = subprocess.run([sys.executable, str(CHECK_API)], capture_output=True, text=True,
                            check=False, timeout=300)
    lines = result.stdout.splitlines()
    assert lines, result.stderr
    assert lines[-1].startswith("API:"), result.stdout + result.stderr
    engine = re.compile(rf"faceinfer\.({'|'.join(COMPLETE_MODULES)})\.")
    short = [line for line in lines[:-1] if engine.search(line)]
    assert not short, "\n".join(short)


def test_package_exports_the_stage_handlers() -> None:
    for name in ("Detect", "Align", "Mask", "Identity", "File", "ExtractRunner", "FrameFaces",
                 "ExtractSignal", "DetectedFace", "FaceswapError", "OutOfMemoryError"):
        assert hasattr(faceinfer, name), name
    assert faceinfer.FaceswapError is faceinfer.FaceInferError


def test_the_engine_never_sleeps_or_polls() -> None:
    """Synchronisation is by events, conditions and sentinels only."""
    package = Path(faceinfer.__file__).parent
    offenders = [f"{path.relative_to(package)}:{number}"
                 for path in package.rglob("*.py")
                 for number, line in enumerate(path.read_text().splitlines(), start=1)
                 if re.search(r"\bsleep\(|timeout=0\.\d", line)]
    assert not offenders, offenders


def test_version_and_plugin_listing_on_the_command_line() -> None:
    version = subprocess.run([sys.executable, "-m", "faceinfer", "--version"],
                             capture_output=True, text=True, check=True, timeout=60)
    assert version.stdout.strip() == f"faceinfer {faceinfer.__version__}"
    listing = subprocess.run([sys.executable, "-m", "faceinfer", "plugins", "--all"],
                             capture_output=True, text=True, check=True, timeout=60)
    assert re.search(r"^detect\s+test-blobs\s", listing.stdout, re.MULTILINE), listing.stdout
    hidden = subprocess.run([sys.executable, "-m", "faceinfer", "plugins"],
                            capture_output=True, text=True, check=True, timeout=60)
    assert "test-blobs" not in hidden.stdout
