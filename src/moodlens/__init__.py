"""moodlens: find faces in a photo and read their facial expression, offline.

    >>> from moodlens import Analyzer
    >>> result = Analyzer().analyze("photo.jpg")
    >>> [(f.expression, f.scores) for f in result.faces]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["Analyzer", "AnalysisResult", "Face", "FaceBox", "__version__"]

if TYPE_CHECKING:
    from moodlens.engine.analyzer import Analyzer
    from moodlens.engine.result import AnalysisResult, Face, FaceBox


def __getattr__(name: str):
    # Lazy: `import moodlens` stays cheap (the CLI and training import it without loading any model).
    if name == "Analyzer":
        from moodlens.engine.analyzer import Analyzer

        return Analyzer
    if name in {"AnalysisResult", "Face", "FaceBox"}:
        from moodlens.engine import result

        return getattr(result, name)
    raise AttributeError(f"module 'moodlens' has no attribute {name!r}")
