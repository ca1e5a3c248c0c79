"""Class sets and how the FER2013 and FER+ label columns map onto them."""

from __future__ import annotations

from dataclasses import dataclass

from moodlens.engine.classify import CLASSES

# FER2013 `emotion` codes, in code order.
FER2013_CLASSES: tuple[str, ...] = CLASSES["7"]

# FER+ vote columns, in file order, mapped to our class names (None: not an emotion).
FERPLUS_COLUMNS: tuple[str, ...] = (
    "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF",
)
FERPLUS_TO_CLASS: dict[str, str | None] = {
    "neutral": "neutral", "happiness": "happy", "surprise": "surprise", "sadness": "sad",
    "anger": "angry", "disgust": "disgust", "fear": "fear", "contempt": None, "unknown": None, "NF": None,
}


@dataclass(frozen=True)
class ClassSet:
    """An ordered set of expression classes a model predicts."""

    name: str
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.classes)

    def index(self, label: str) -> int:
        return self.classes.index(label)

    def fer2013_indices(self) -> list[int]:
        """Position of each of our classes among the 7 FER2013 classes (to restrict a 7-class output)."""
        return [FER2013_CLASSES.index(c) for c in self.classes]


# The FER+ head predicts FER+'s eight emotions (contempt included) in vote-file order; "unknown" and "not a face"
# are not classes: rows where they win get no FER+ target (see moodlens.training.data.ferplus_head_targets).
FERPLUS_HEAD = ClassSet("ferplus", ("neutral", "happy", "surprise", "sad", "angry", "disgust", "fear", "contempt"))
FOUR = ClassSet("4", CLASSES["4"])
SEVEN = ClassSet("7", FER2013_CLASSES)
CLASS_SETS: dict[str, ClassSet] = {"4": FOUR, "7": SEVEN}


def class_set(name: str | int) -> ClassSet:
    """The class set called `name` ("4" or "7")."""
    try:
        return CLASS_SETS[str(name)]
    except KeyError:
        raise ValueError(f"unknown class set {name!r}; choose one of {sorted(CLASS_SETS)}") from None
