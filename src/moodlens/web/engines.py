"""The app's analyzers: one per class set, each built once and shared by every request and thread."""

from __future__ import annotations

import threading
from typing import Any

from flask import current_app

CLASS_SETS = ("4", "7")


class AnalyzerPool:
    """Holds one `moodlens.Analyzer` per class set.

    The default class set's analyzer is built when the pool is made (at app creation, so a broken model fails
    at start-up); another class set is built the first time a request asks for it, once, under a lock.
    """

    def __init__(
        self,
        default: str = "4",
        model_path: str | None = None,
        detector: str = "auto",
        analyzer: Any = None,
        max_bytes: int | None = None,
    ) -> None:
        if default not in CLASS_SETS:
            raise ValueError(f"MOODLENS_CLASSES must be one of {CLASS_SETS}, not {default!r}")
        self.default = default
        self.model_path = model_path
        self.detector = detector
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._analyzers: dict[str, Any] = {}
        if analyzer is not None:
            n = str(len(analyzer.classes))
            self.default = n if n in CLASS_SETS else default
            self._analyzers[self.default] = analyzer
        else:
            self.get(self.default)

    @property
    def loaded(self) -> list[str]:
        """Class sets whose analyzer is built."""
        return sorted(self._analyzers)

    def load(self, *classes: str) -> None:
        """Build the analyzers of `classes` now (before gunicorn forks, so workers share them)."""
        for c in classes:
            self.get(str(c))

    def get(self, classes: str | None = None) -> Any:
        """The analyzer for `classes` ("4" or "7"; None: the default)."""
        key = classes or self.default
        found = self._analyzers.get(key)
        if found is not None:
            return found
        if key not in CLASS_SETS:
            raise ValueError(f"unknown class set {key!r}")
        with self._lock:
            if key not in self._analyzers:
                from moodlens import Analyzer

                model_path = self.model_path if key == self.default else None
                limits = {"max_bytes": self.max_bytes} if self.max_bytes else {}
                self._analyzers[key] = Analyzer(
                    classes=key, model_path=model_path, detector=self.detector, **limits)
            return self._analyzers[key]


def analyzers() -> AnalyzerPool:
    """The current app's pool."""
    return current_app.extensions["moodlens"]
