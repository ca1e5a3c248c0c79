"""Typed errors. Every failure a user can cause has its own class and a message that says what to do."""

from __future__ import annotations


class MoodlensError(Exception):
    """Base class of every error moodlens raises on purpose."""


class AnalysisTimeout(MoodlensError):
    """One image took longer than the analyzer's time limit: the work stopped at the next stage boundary (the
    server answers 503 with Retry-After; nothing about the image is wrong, only the time it needs)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the photo took more than {seconds:g} s to analyse and was stopped; try a smaller photo, "
                         "fewer faces or no explanation")
        self.seconds = seconds


class ModelError(MoodlensError):
    """A model file is missing, corrupt or does not match its card."""


class ImageError(MoodlensError):
    """The input could not be used as an image."""

    status = 422


class NotAnImageError(ImageError):
    """The bytes are not an image in a supported format."""

    status = 415


class TruncatedImageError(ImageError):
    """The image file is cut short or corrupt."""

    status = 422


class ImageTooLargeError(ImageError):
    """The file is over the byte limit, or the image over the pixel limit (decompression-bomb guard)."""

    status = 413


class ImageTooComplexError(ImageError):
    """The file is built to cost far more to decode than any photo (a CPU bomb): thousands of JPEG scans,
    or of empty PNG chunks."""

    status = 422


class ImageTooSmallError(ImageError):
    """The image is too small to hold a face."""

    status = 422
