"""glibc's malloc thresholds, raised by ``faceinfer extract``: big blocks freed in one batch are
reused by the next without page faults; the user's own tunables and other C libraries are
left alone."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from faceinfer.app import allocator
from faceinfer.cli import main
from tests.test_cli import TEST_FLAGS
from tests.test_extract import squares, write_images

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Batches in a worker thread, each making and freeing two 28 MB arrays and a 4 MB one (as
# R-Net's layers do), then the page faults they cost, printed with whether the thresholds were
# set. Left to itself, glibc sets its trim threshold to twice the largest block freed (56 MB),
# below the 60 MB freed at the heap's top: each batch gives the memory back and faults it in.
BATCHES = textwrap.dedent("""
    import resource, sys, threading
    import numpy as np
    from faceinfer.app.allocator import tune_allocator

    tuned = tune_allocator() if sys.argv[1] == "tune" else False

    def batches():
        for _ in range(30):
            first = np.ones(7 << 20, dtype=np.float32)
            second = first * 2.0
            third = np.ones(1 << 20, dtype=np.float32)
            del first, second, third

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    worker = threading.Thread(target=batches)
    worker.start()
    worker.join()
    print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def faults(mode: str, env: dict[str, str] | None = None) -> tuple[bool, int]:
    """Run the batches in a new interpreter; whether it tuned malloc, and its page faults."""
    done = subprocess.run([sys.executable, "-c", BATCHES, mode], capture_output=True,
                          text=True, check=True, timeout=120, env=env)
    tuned, count = done.stdout.split()
    return tuned == "True", int(count)


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt")
def test_raised_thresholds_reuse_freed_blocks_instead_of_faulting_them_in_again() -> None:
    plain_tuned, plain = faults("plain")
    tuned, fewer = faults("tune")
    assert not plain_tuned
    assert tuned
    # Untuned, about 1,500 pages a batch; tuned, about 1,500 in all.
    assert plain > 5 * fewer, (plain, fewer)


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt")
@pytest.mark.parametrize("name", allocator.USER_SETTINGS)
def test_the_users_own_malloc_tunables_stand(name: str) -> None:
    env = {key: value for key, value in os.environ.items()
           if key not in allocator.USER_SETTINGS}
    env[name] = "glibc.malloc.check=0" if name == "GLIBC_TUNABLES" else "1048576"
    tuned, _ = faults("tune", env)
    assert not tuned


def test_other_c_libraries_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("musl", "1.2"))
    assert allocator.tune_allocator() is False


def test_extract_tunes_the_allocator_before_it_runs(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bool] = []

    def tune() -> bool:
        calls.append(True)
        return True

    monkeypatch.setattr(allocator, "tune_allocator", tune)
    source = write_images(tmp_path / "frames", {"a.png": squares(60)})
    assert main(["extract", "-i", str(source), *TEST_FLAGS, "--no-re-align",
                 "-L", "WARNING"]) == 0
    assert calls == [True]
