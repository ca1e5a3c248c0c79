"""What an analysis returns: plain dataclasses with `to_dict()` for JSON, shared by every front end."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FaceBox:
    """A face's box in image pixels: top-left corner, width, height."""

    x: float
    y: float
    w: float
    h: float

    def as_list(self) -> list[float]:
        return [round(self.x, 1), round(self.y, 1), round(self.w, 1), round(self.h, 1)]

    def __iter__(self):
        """`x, y, w, h = face.box`."""
        return iter((self.x, self.y, self.w, self.h))

    def __repr__(self) -> str:
        return f"FaceBox(x={self.x:.1f}, y={self.y:.1f}, w={self.w:.1f}, h={self.h:.1f})"


@dataclass(frozen=True)
class Face:
    """One detected face and its expression.

    `scores` holds every class's calibrated probability (they sum to 1); `uncertain` is True when the top score
    is below the analyzer's threshold. `keypoints` are BlazeFace's six (x, y) points in image pixels: right eye,
    left eye, nose tip, mouth, right ear tragion, left ear tragion (right/left as seen by the person).
    """

    box: FaceBox
    score: float
    keypoints: list[tuple[float, float]]
    expression: str
    scores: dict[str, float]
    uncertain: bool
    heatmap: list[list[float]] | None = None
    quality: str = "ok"  # "ok", or why the face reads poorly: "small", "blurred", "profile" (engine.quality)
    heatmap_skipped: str | None = None  # explain was asked but this face got no heatmap: "face-limit"

    @property
    def top_score(self) -> float:
        """The probability of `expression`, the most likely class."""
        return self.scores[self.expression]

    def __repr__(self) -> str:
        scores = ", ".join(f"{k}={v:.2f}" for k, v in self.scores.items())
        flags = (", uncertain" if self.uncertain else "") + (f", {self.quality}" if self.quality != "ok" else "")
        return (f"Face({self.expression!r} {self.top_score:.0%}{flags}, "
                f"box={self.box!r}, score={self.score:.2f}, scores=({scores}))")

    def to_dict(self) -> dict:
        d = {
            "box": self.box.as_list(),
            "score": round(self.score, 4),
            "keypoints": [[round(x, 1), round(y, 1)] for x, y in self.keypoints],
            "expression": self.expression,
            "scores": {k: round(v, 4) for k, v in self.scores.items()},
            "uncertain": self.uncertain,
            "quality": self.quality,
        }
        if self.heatmap is not None:
            d["heatmap"] = self.heatmap
        if self.heatmap_skipped is not None:
            d["heatmap_skipped"] = self.heatmap_skipped
        return d


@dataclass
class AnalysisResult:
    """All faces found in one image, the image size and how long each stage took (milliseconds)."""

    width: int
    height: int
    faces: list[Face] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    classes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {
            "width": self.width,
            "height": self.height,
            "classes": list(self.classes),
            "faces": [f.to_dict() for f in self.faces],
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
        }
