"""LiteRT interpreters, lent out one caller at a time.

An interpreter is not thread-safe, but it need not belong to one thread either. A pool lends a free one and
builds another only when every one is busy, so sequential requests reuse the interpreter built at start-up
(shared copy-on-write by forked server workers) instead of each new thread building and packing its own copy
of the weights (measured: +16 MB per thread and interpreter set in a server worker).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic, TypeVar

from moodlens.engine.errors import ModelError

T = TypeVar("T")

#: No model file moodlens uses comes near this; a bigger one is a wrong path (a dataset, a disk image).
MAX_MODEL_BYTES = 512 * 2**20


def read_model(path: str | Path, what: str = "model") -> bytes:
    """The whole model file, read once into memory (ModelError naming `path` if it cannot be).

    Interpreters are then built from these bytes, never from the path: LiteRT maps a file it is given by path,
    and a file truncated or rewritten under a running server (a botched deploy, a full disk) made every later
    access through that mapping a SIGBUS, killing the worker, and each fresh worker forked from the master
    with it. Bytes in memory are immune, and are shared copy-on-write by forked workers.
    """
    path = Path(path)
    try:
        if not path.is_file():
            raise ModelError(f"{what} file not found: {path}")
        size = path.stat().st_size
        if size > MAX_MODEL_BYTES:
            raise ModelError(f"{path}: {size:,} bytes is not a {what} file (over {MAX_MODEL_BYTES:,})")
        with open(path, "rb") as f:
            return f.read(MAX_MODEL_BYTES + 1)
    except OSError as exc:  # no permission, a vanished file
        raise ModelError(f"{path}: cannot read the {what} file ({exc.strerror or exc})") from exc


def litert_interpreter(content: bytes, num_threads: int = 1) -> Any:
    """A LiteRT interpreter of `content` (from `read_model`), its tensors allocated. The interpreter keeps a
    reference to `content`, which must not change (bytes never do)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=content, num_threads=num_threads)
    it.allocate_tensors()
    return it


class InterpreterPool(Generic[T]):
    """Objects built by `factory` (an interpreter and what goes with it), lent by `borrow()`."""

    def __init__(self, factory: Callable[[], T], fork_safe: bool = True, eager: bool = True):
        self._factory = factory
        self._free: list[T] = []
        self._lock = threading.Lock()
        self.built = 0
        # An object that is not fork-safe (OpenCV DNN's nets: a forked child using its parent's hung 4 runs in
        # 6) is never used by a child process: it builds its own.
        self._fork_safe = fork_safe
        self._pid = os.getpid()
        if eager:
            self._free.append(self._build())  # build one now: a broken model fails at start-up

    def _build(self) -> T:
        item = self._factory()
        self.built += 1
        return item

    @contextmanager
    def borrow(self) -> Iterator[T]:
        if not self._fork_safe and os.getpid() != self._pid:
            self._lock = threading.Lock()  # a lock copied while another thread held it would never open
            self._free, self._pid = [], os.getpid()
        with self._lock:
            item = self._free.pop() if self._free else None
        if item is None:  # every one is in use: one more, kept for the next busy moment
            item = self._build()
        try:
            yield item
        finally:
            with self._lock:
                self._free.append(item)

    def peek(self) -> T:
        """An idle item, for reading its (immutable) details at start-up."""
        with self._lock:
            return self._free[-1]


@contextmanager
def quiet_native_output(quiet: bool = True) -> Iterator[None]:
    """With `quiet`: native libraries' notices are kept off the terminal (for `-q`).

    LiteRT's C++ runtime prints "INFO: Created TensorFlow Lite XNNPACK delegate" straight to file descriptor 2
    when an interpreter is built, beyond the reach of Python's sys.stderr, so fd 2 points at /dev/null while
    the block runs (build the models inside it). OpenCV warns when YuNet's net is built, lazily on the first
    photo that needs it, so its log level is set to errors only for the rest of the process.
    """
    if not quiet:
        yield
        return
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
