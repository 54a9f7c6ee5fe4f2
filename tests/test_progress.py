"""The progress display: figures, the bar on a terminal, log lines elsewhere, and log records
that clear the bar first."""
from __future__ import annotations

import io
import logging
import math

import pytest

from faceinfer.app.progress import Progress, format_duration


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("seconds", "shown"), [
    (0.0, "0:00"), (59.4, "0:59"), (61.0, "1:01"), (3599.0, "59:59"), (3600.0, "1:00:00"),
    (7325.0, "2:02:05"), (math.nan, "--:--"), (math.inf, "--:--"), (-1.0, "--:--")])
def test_format_duration(seconds: float, shown: str) -> None:
    assert format_duration(seconds) == shown


def test_rate_and_eta_come_from_the_frames_done_over_time() -> None:
    clock = Clock()
    progress = Progress(20, stream=io.StringIO(), tty=True, clock=clock)
    assert math.isnan(progress.rate)
    assert math.isnan(progress.eta)
    progress.update(1, 2)
    for _ in range(9):
        clock.now += 0.5
        progress.update(1, 1)
    assert progress.rate == pytest.approx(2.0)  # 9 frames in 4.5 s after the first
    assert progress.eta == pytest.approx(5.0)  # 10 left at 2 frames/s
    assert progress.text() == "10/20 frames, 2.0 frames/s, ETA 0:05, 11 faces"


def test_an_unknown_total_shows_counts_without_eta() -> None:
    clock = Clock()
    progress = Progress(0, stream=io.StringIO(), tty=True, clock=clock)
    progress.update(1)
    clock.now += 1.0
    progress.update(1)
    assert math.isnan(progress.eta)
    assert progress.text().startswith("2 frames, 1.0 frames/s, ETA --:--")


def test_on_a_terminal_the_bar_is_redrawn_in_place_at_most_ten_times_a_second() -> None:
    clock = Clock()
    stream = io.StringIO()
    progress = Progress(4, stream=stream, tty=True, clock=clock)
    progress.update(1)
    assert stream.getvalue().count("\r") == 1
    progress.update(1)  # same instant: not drawn again
    assert stream.getvalue().count("\r") == 1
    clock.now += 0.2
    progress.update(1, 3)
    drawn = stream.getvalue()
    assert drawn.count("\r") == 2
    assert "\n" not in drawn
    last = drawn.rsplit("\r", 1)[1]
    assert last.startswith(" 75% ")
    assert "3/4 frames" in last
    assert "frames/s" in last
    assert "ETA" in last
    assert "3 faces" in last
    progress.close()
    assert stream.getvalue().endswith("\n")
    assert "3/4 frames" in stream.getvalue().rsplit("\r", 1)[1]  # the final figures


def test_off_a_terminal_it_logs_a_line_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    stream = io.StringIO()
    progress = Progress(100, stream=stream, tty=False, interval=10.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="faceinfer.app.progress"):
        for _ in range(50):
            clock.now += 1.0
            progress.update(1)
        progress.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "faceinfer.app.progress"]
    assert len(lines) == 6  # the first update, one every 10 s after it, and the close
    assert lines[-1].startswith("Progress: 50/100 frames, 1.0 frames/s, ETA 0:50")
    assert lines[-1].endswith("(50%)")
    assert stream.getvalue() == ""  # no bar, no control characters
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="faceinfer.app.progress"):
        progress.close()  # the last figures were just logged: not again
    assert not caplog.records


def test_log_records_clear_the_bar_before_they_are_written() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        progress = Progress(10, stream=stream, tty=True)
        with progress.over_logging():
            progress.update(1)
            logging.getLogger("faceinfer.test").warning("a warning")
        logging.getLogger("faceinfer.test").warning("after")
    finally:
        root.removeHandler(handler)
    text = stream.getvalue()
    assert "\r\x1b[Ka warning\n" in text  # the bar's line wiped, then the record
    assert text.endswith("after\n")
    assert "\r\x1b[Kafter" not in text
    assert not handler.filters
