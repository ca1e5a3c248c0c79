"""The app's analyzers: one per class set and per shipped alternative model, each built once and shared by every
request and thread."""

from __future__ import annotations

import threading
from typing import Any

from flask import current_app

from moodlens.engine.classify import ALTERNATIVES

CLASS_SETS = ("4", "7")
#: Shipped models a request may choose by name instead of its class set's default (`model=photos`)
MODEL_NAMES: tuple[str, ...] = tuple(ALTERNATIVES)


class AnalyzerPool:
    """Holds one `moodlens.Analyzer` per class set ("4", "7") and per shipped alternative ("photos").

    The default class set's analyzer is built when the pool is made (at app creation, so a broken model fails
    at start-up); any other is built the first time a request asks for it, once, under a lock.
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
        """Class sets and model names whose analyzer is built."""
        return sorted(self._analyzers)

    def load(self, *keys: str) -> None:
        """Build the analyzers of `keys` (class sets or model names) now (before gunicorn forks, so workers
        share them)."""
        for key in keys:
            self.get(str(key))

    def get(self, key: str | None = None) -> Any:
        """The analyzer for `key`: a class set ("4" or "7"), a shipped model's name ("photos"), or None (the
        default class set)."""
        key = key or self.default
        found = self._analyzers.get(key)
        if found is not None:
            return found
        if key not in CLASS_SETS + MODEL_NAMES:
            raise ValueError(f"unknown class set or model {key!r}")
        with self._lock:
            if key not in self._analyzers:
                from moodlens import Analyzer

                model_path = self.model_path if key == self.default else key if key in MODEL_NAMES else None
                limits = {"max_bytes": self.max_bytes} if self.max_bytes else {}
                self._analyzers[key] = Analyzer(
                    classes=key if key in CLASS_SETS else "4", model_path=model_path, detector=self.detector,
                    **limits)
            return self._analyzers[key]


def analyzers() -> AnalyzerPool:
    """The current app's pool."""
    return current_app.extensions["moodlens"]
