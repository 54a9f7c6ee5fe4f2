"""What the built-in test plugins share: settings that make them fail on purpose.

Test plugins are tiny deterministic numpy plugins, registered under names starting ``test-``,
that let the whole engine run in CI in seconds. They are hidden from plugin listings.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

from faceinfer.errors import ConfigError

FAIL_STEPS = ("", "load_model", "pre_process", "process", "post_process")


class InjectedFailureError(RuntimeError):
    """The error a test plugin raises when told to fail."""


@dataclass(frozen=True)
class TestPluginConfig:
    """Failure injection settings of every test plugin (mixed into its config)."""

    fail_at: str = ""
    """The plugin step that raises InjectedFailureError: load_model, pre_process, process or
    post_process. Empty: never fail."""
    fail_after: int = 0
    """How many calls of that step succeed before it fails."""

    def check_failure_settings(self) -> None:
        """Validate the failure settings."""
        if self.fail_at not in FAIL_STEPS:
            raise ConfigError(f"fail_at: expected one of {FAIL_STEPS}, got {self.fail_at!r}")
        if self.fail_after < 0:
            raise ConfigError(f"fail_after: expected >= 0, got {self.fail_after}")


class FailureCounter:
    """Counts calls of each step and raises on the configured one."""

    def __init__(self, config: TestPluginConfig, name: str) -> None:
        config.check_failure_settings()
        self._config = config
        self._name = name
        self._calls: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, step: str) -> None:
        """Count a call of ``step``; raise if it is the one configured to fail."""
        if step != self._config.fail_at:
            return
        with self._lock:
            count = self._calls.get(step, 0)
            self._calls[step] = count + 1
        if count >= self._config.fail_after:
            raise InjectedFailureError(f"{self._name}: injected failure in {step} "
                                  f"(call {count + 1})")
