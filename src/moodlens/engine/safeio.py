"""Files the commands read and write, and the file names they print: never a hang, never through a planted link.

Every front end (the library's path input, `moodlens analyze`, `moodlens batch`, video timelines) goes through
here, so they all treat links, FIFOs and devices the same way.

- Reading: only regular files are read. A FIFO would block for ever waiting for a writer and /dev/zero never
  ends, so both are refused at once (stat, then a non-blocking open checked again with fstat). A link to a
  regular file is followed; code that lists a folder keeps only what resolves inside it (`list_inside`).
- Writing: `write_atomic` writes a new temporary file beside the output and renames it over the final name.
  The final name is never opened, so a symlink planted there can never redirect the write, and a write that
  fails midway (a full disk) leaves no truncated file under the final name. Sub-folders of an output folder are
  created and entered one at a time without following links, so a link inside it cannot carry files elsewhere.
- Text: `printable` escapes control characters (a file name can carry terminal escape sequences) and
  `csv_cell` also keeps spreadsheets from running a cell as a formula.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

from moodlens.engine.errors import MoodlensError

log = logging.getLogger(__name__)

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | _CLOEXEC  # O_NONBLOCK: opening a FIFO must not wait
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
# C0 and C1 controls, DEL, bidirectional overrides (they reorder what a terminal shows) and lone surrogates (the
# undecodable bytes of a file name, which would make printing the name itself raise UnicodeEncodeError)
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what spreadsheets read as the start of a formula


class UnsafeOutputError(MoodlensError, OSError):
    """An output would be written through a symlink, over something that is not a regular file, or outside
    the folder it belongs in."""


# ------------------------------------------------------------------------------------------------ reading


def open_regular(path: str | os.PathLike) -> int:
    """A read-only descriptor of `path` (links followed); OSError unless it is a regular file."""
    _refuse_special(os.stat(path).st_mode, path)  # before opening: opening a device can itself do something
    fd = os.open(path, _READ_FLAGS)
    try:
        _refuse_special(os.fstat(fd).st_mode, path)  # again on what was opened: the name may have changed since
    except OSError:
        os.close(fd)
        raise
    return fd


def _refuse_special(mode: int, path: str | os.PathLike) -> None:
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
    if not stat.S_ISREG(mode):
        raise OSError(errno.EINVAL, "not a regular file (a FIFO, socket or device)", str(path))


def read_regular(path: str | os.PathLike, max_bytes: int | None = None) -> bytes:
    """The content of a regular file; with `max_bytes`, at most `max_bytes` + 1 bytes (enough to tell that the
    file is over the limit without reading all of it)."""
    with os.fdopen(open_regular(path), "rb") as f:
        return f.read() if max_bytes is None else f.read(max_bytes + 1)


def check_regular(path: str | os.PathLike) -> None:
    """Refuse what `read_regular` would, for readers that open files by name themselves (OpenCV's video reader)."""
    os.close(open_regular(path))


def is_inside(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """Whether `path`, every link resolved, is `root` or under it (also resolved)."""
    real_root = os.path.realpath(root)
    return os.path.commonpath([os.path.realpath(path), real_root]) == real_root


def list_inside(root: str | os.PathLike, suffixes: Iterable[str] | None = None) -> list[str]:
    """Keys (relative POSIX paths) of the files under a local folder, recursive, sorted; filtered by suffix
    (case-insensitive) when given. Linked folders are not entered and links that resolve outside `root` are
    skipped with a warning, so nothing outside the folder is read. FIFOs and devices are listed: reading them
    fails at once, and the caller reports that file instead of leaving it out silently."""
    wanted = {s.lower() for s in suffixes} if suffixes is not None else None
    keys = []
    for folder, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in filenames:
            full = os.path.join(folder, name)
            if wanted is not None and os.path.splitext(name)[1].lower() not in wanted:
                continue
            if not is_inside(full, root):
                log.warning("skipping %s: it links outside %s", printable(full), printable(str(root)))
                continue
            keys.append(os.path.relpath(full, root).replace(os.sep, "/"))
    return sorted(keys)


# ------------------------------------------------------------------------------------------------ writing


def write_atomic(path: str | os.PathLike, data: bytes, root: str | os.PathLike | None = None) -> None:
    """Write `data` as `path`: a new file in the same folder, flushed to disk, then renamed over the final name.

    `root` is the folder the caller may write in (default: `path`'s own folder), created if missing; the
    sub-folders between it and `path` are created and entered without following links. An existing symlink,
    folder or special file at `path` is refused. An existing regular file (an earlier run's output) is
    replaced by name only: its content, and that of any other link to it, is never written into.
    """
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    folder = _open_folder(root, path.parent.relative_to(root).parts, path)
    try:
        _check_replaceable(folder, path)
        _write_new(folder, path.name, data)
    finally:
        os.close(folder)


def _open_folder(root: Path, parts: Sequence[str], target: Path) -> int:
    """A descriptor of root/parts..., creating missing sub-folders and refusing any that is a link."""
    os.makedirs(root, exist_ok=True)  # the root itself is the caller's choice: links in it are followed
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in parts:
            if part in ("", ".", ".."):
                raise UnsafeOutputError(f"{printable(str(target))}: '..' in an output path")
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, dir_fd=fd)
            sub = _open_subfolder(fd, part, target)
            os.close(fd)
            fd = sub
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_subfolder(fd: int, part: str, target: Path) -> int:
    try:
        return os.open(part, _DIR_FLAGS | _NOFOLLOW, dir_fd=fd)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        raise UnsafeOutputError(f"{printable(str(target))}: its folder {printable(part)!r} is a symlink or not a "
                                "folder; refusing to write through it") from exc


def _check_replaceable(folder: int, path: Path) -> None:
    try:
        mode = os.stat(path.name, dir_fd=folder, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        raise UnsafeOutputError(f"{printable(str(path))}: is a symlink; refusing to write through it (remove it "
                                "or choose another output folder)")
    if not stat.S_ISREG(mode):
        raise UnsafeOutputError(f"{printable(str(path))}: exists and is not a regular file; not replaced")


def _write_new(folder: int, name: str, data: bytes) -> None:
    # the name is cut so that the temporary name stays under the 255-byte limit of a file name
    tmp = f".{name[:100]}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, _NEW_FLAGS, 0o666, dir_fd=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # renaming replaces a link planted at the final name since the check, it never follows it
        os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=folder)
        raise


# ------------------------------------------------------------------------------------------------ text


def printable(text: str, lines: bool = False) -> str:
    """`text` with control characters, bidirectional overrides and undecodable bytes written as escapes
    (`\\x1b`, `\\n`, `\\u202e`, `\\udcff`), so printing a file name can never drive the terminal. With
    `lines`, line breaks are kept (a message of several lines)."""
    if lines:
        return "\n".join(printable(line) for line in text.split("\n"))
    return _UNPRINTABLE.sub(lambda m: ascii(m.group())[1:-1], text)


def csv_cell(value: object) -> object:
    """A CSV cell that spreadsheets show as text: `printable`, and a leading = + - @ (or tab, CR) gets a `'`
    in front (OWASP's advice against CSV injection). Anything but text passes unchanged."""
    if not isinstance(value, str):
        return value
    text = printable(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def left_out_note(left_out: list[str], suffixes: set[str] | frozenset[str], what: str, shown: int = 5) -> str:
    """One line naming the files of the input folders that are not read: "skipped 2 files whose extension is not
    a photo or video moodlens reads (.avif .bmp ...): a.txt, b.psd"."""
    names = ", ".join(printable(n) for n in left_out[:shown])
    more = f" and {len(left_out) - shown} more" if len(left_out) > shown else ""
    files = "file" if len(left_out) == 1 else "files"
    return (f"skipped {len(left_out)} {files} whose extension is not {what} ({' '.join(sorted(suffixes))}): "
            f"{names}{more}")
