"""Paths and URLs alike: local files and `s3://bucket/prefix` objects through fsspec/s3fs.

Every batch front end reads and writes through here, so a local folder and an S3 prefix behave the same:
listing images under a root, reading bytes, atomic writes, and keys that can never escape their root.

S3 settings come from the usual AWS environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE,
AWS_REGION, ...). For an S3-compatible server pass `endpoint=` (the CLI's `--s3-endpoint`) or set
MOODLENS_S3_ENDPOINT. Connection failures are retried with exponential backoff (MOODLENS_S3_RETRIES attempts,
default 5) and then raise `StorageUnavailableError` naming the endpoint.
"""

from __future__ import annotations

import logging
import os
import posixpath
import random
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from moodlens.engine import safeio
from moodlens.engine.decode import IMAGE_SUFFIXES
from moodlens.engine.errors import MoodlensError

S3_ENDPOINT_ENV = "MOODLENS_S3_ENDPOINT"
RETRIES_ENV = "MOODLENS_S3_RETRIES"
BACKOFF_ENV = "MOODLENS_S3_BACKOFF"  # first delay in seconds; doubles on each attempt

log = logging.getLogger(__name__)
T = TypeVar("T")


class StorageError(MoodlensError):
    """A storage location could not be used."""


class UnsafePathError(StorageError, ValueError):
    """A relative key is absolute or has `..` components: it would escape its root."""


class StorageUnavailableError(StorageError):
    """The object store could not be reached, even after retrying."""


def is_url(path: str) -> bool:
    """True for `scheme://...` other than `file://`."""
    return "://" in str(path) and not str(path).startswith("file://")


def local_path(path: str | os.PathLike) -> str:
    """A local path or `file://` URL as an absolute local path."""
    p = str(path)
    return os.path.abspath(p[len("file://"):] if p.startswith("file://") else p)


def resolve_endpoint(endpoint: str | None = None) -> str | None:
    """The S3 endpoint to use: the explicit one, else MOODLENS_S3_ENDPOINT, else None (AWS's own)."""
    return endpoint or os.environ.get(S3_ENDPOINT_ENV) or None


def _filesystem(url: str, endpoint: str | None = None):
    """(fsspec filesystem, path inside it) for a URL. fsspec caches instances, so this is cheap to repeat."""
    import fsspec

    protocol = url.split("://", 1)[0]
    # No listing cache: other processes (pool workers, Spark tasks) write parts under the prefixes listed
    # here, and s3fs answers `info`/`cat_file` from a cached listing of the folder ("not in it: FileNotFoundError")
    # instead of asking the store: a resumed `batch` with 2+ workers failed on the first part a worker wrote.
    options: dict = {"use_listings_cache": False}
    if protocol in ("s3", "s3a"):
        # botocore's own retries are off: `_retry` below does them, with backoff and a clear final error
        options["config_kwargs"] = {"retries": {"total_max_attempts": 1}, "connect_timeout": 5, "read_timeout": 60}
        if resolve_endpoint(endpoint):
            options["endpoint_url"] = resolve_endpoint(endpoint)
    fs, path = fsspec.core.url_to_fs(url, **options)
    return fs, path


def _is_transient(exc: BaseException) -> bool:
    """Connection-level failures worth retrying (not missing objects or refused permissions)."""
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError |
                  FileExistsError | UnsafePathError):
        return False
    transient: tuple[type[BaseException], ...] = (OSError, TimeoutError)
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError

        transient += (BotoConnectionError, HTTPClientError)
    except ImportError:
        pass
    try:
        from fsspec.exceptions import FSTimeoutError

        transient += (FSTimeoutError,)
    except ImportError:
        pass
    return isinstance(exc, transient)


def retry_attempts() -> int:
    """How many times an S3 call is tried before giving up (MOODLENS_S3_RETRIES, default 5)."""
    return max(1, int(os.environ.get(RETRIES_ENV, "5")))


def _retry(call: Callable[[], T], what: str, endpoint: str | None) -> T:
    """Run `call`, retrying transient failures with jittered exponential backoff, then fail clearly."""
    attempts = retry_attempts()
    delay = float(os.environ.get(BACKOFF_ENV, "0.5"))
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as exc:
            if type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
                # a setup problem, not a bad object: stop instead of failing every object the same way
                raise StorageUnavailableError(
                    f"{what}: no usable S3 credentials ({exc}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                    "or AWS_PROFILE (on Spark, in the executors' environment too)") from exc
            if not _is_transient(exc):
                raise
            if attempt == attempts:
                where = resolve_endpoint(endpoint) or "the AWS S3 endpoint"
                raise StorageUnavailableError(
                    f"{what}: could not reach {where} after {attempts} attempts ({type(exc).__name__}: {exc}). "
                    f"Check that the server is up, and --s3-endpoint / {S3_ENDPOINT_ENV} / AWS_* settings."
                ) from exc
            wait = min(delay * 2 ** (attempt - 1), 30.0) * random.uniform(0.75, 1.0)
            log.warning("%s failed (%s: %s); retry %d/%d in %.1f s",
                        what, type(exc).__name__, exc, attempt, attempts - 1, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


def safe_key(key: str) -> str:
    """`key` as a clean relative POSIX key; raises UnsafePathError if it is absolute or has `..` parts."""
    k = str(key).replace("\\", "/")
    if not k or k.startswith("/") or "://" in k or (len(k) > 1 and k[1] == ":"):
        raise UnsafePathError(f"{key!r}: must be a relative path (no leading '/', drive or scheme)")
    parts = [p for p in k.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafePathError(f"{key!r}: '..' components are not allowed (the key would escape its root)")
    if not parts:
        raise UnsafePathError(f"{key!r}: empty key")
    return "/".join(parts)


def join(root: str, key: str) -> str:
    """`root` (a local path or URL) joined with a relative `key` that is checked not to escape it."""
    key = safe_key(key)
    if is_url(root):
        return root.rstrip("/") + "/" + key
    return os.path.join(local_path(root), *key.split("/"))


def check_url(url: str) -> str:
    """A full URL from a list file, refused if its path has `..` components."""
    scheme, rest = url.split("://", 1)
    if ".." in rest.split("/"):
        raise UnsafePathError(f"{url!r}: '..' components are not allowed")
    return url


def _has_image_suffix(name: str, suffixes: Iterable[str]) -> bool:
    return posixpath.splitext(name)[1].lower() in suffixes


def list_keys(root: str, suffixes: Iterable[str] | None = None, endpoint: str | None = None) -> list[str]:
    """Keys (relative POSIX paths) of the files under `root`, recursive, sorted; filtered by suffix when given.

    Local symlinks that lead outside `root` and object keys with `..` parts are skipped with a warning.
    A missing root gives an empty list.
    """
    suffixes = {s.lower() for s in suffixes} if suffixes is not None else None
    keys: list[str] = []
    if not is_url(root):
        return safeio.list_inside(local_path(root), suffixes)  # the same rules as `moodlens analyze`'s folders
    else:
        fs, path = _filesystem(root, endpoint)
        path = path.rstrip("/")
        try:
            found = _retry(lambda: fs.find(path), f"listing {root}", endpoint)
        except FileNotFoundError as exc:  # a missing prefix lists as empty; only a missing bucket raises
            raise StorageError(f"listing {root}: bucket {path.split('/', 1)[0]!r} not found ({exc!r})") from exc
        for full in found:
            key = full[len(path) + 1:] if full.startswith(path + "/") else None
            if key is None or (suffixes is not None and not _has_image_suffix(key, suffixes)):
                continue
            try:
                keys.append(safe_key(key))
            except UnsafePathError as exc:
                log.warning("skipping object %s: %s", full, exc)
    return sorted(keys)


def list_files(root: str, suffixes: Iterable[str] | None = None, endpoint: str | None = None) -> list[str]:
    """Files under `root` (recursive) as full paths/URLs, sorted by key; see `list_keys`."""
    return [join(root, k) for k in list_keys(root, suffixes, endpoint)]


def list_images(root: str, endpoint: str | None = None) -> list[str]:
    """Image files (moodlens.engine.decode.IMAGE_SUFFIXES) under a folder or S3 prefix, sorted, as full paths/URLs."""
    return list_files(root, IMAGE_SUFFIXES, endpoint)


def read_bytes(url: str, endpoint: str | None = None, max_bytes: int | None = None) -> bytes:
    """The whole content of a local file or object; with `max_bytes`, at most `max_bytes` + 1 bytes of a local
    file (enough to tell that it is over the limit without reading all of it).

    Only regular local files are read: a FIFO, socket, device or folder raises OSError at once instead of
    blocking or never ending (a `photo.jpg` that is a pipe or a link to /dev/zero).
    """
    if not is_url(url):
        return safeio.read_regular(local_path(url), max_bytes)
    # Objects are read whole: a ranged GET would bound the download, but S3 answers 416 for a range of an
    # empty object, so `max_bytes` applies to local files only.
    fs, path = _filesystem(url, endpoint)
    return _retry(lambda: fs.cat_file(path), f"reading {url}", endpoint)


def read_text(url: str, endpoint: str | None = None) -> str:
    """A UTF-8 text file or object."""
    return read_bytes(url, endpoint).decode("utf-8")


def write_bytes(url: str, data: bytes, endpoint: str | None = None) -> None:
    """Write `data` atomically: readers see the old content or the new, never a partial file.

    Locally: `safeio.write_atomic` (a temporary file in the same folder, fsync, rename; a symlink or special
    file at the destination is refused, not written through). On S3 one PUT is atomic per object.
    """
    if not is_url(url):
        safeio.write_atomic(local_path(url), data)
        return
    fs, path = _filesystem(url, endpoint)
    try:
        _retry(lambda: fs.pipe_file(path, data), f"writing {url}", endpoint)
    except FileNotFoundError as exc:  # s3fs says only "None" when the bucket is missing
        raise StorageError(f"writing {url}: bucket {path.split('/', 1)[0]!r} not found ({exc!r})") from exc


def exists(url: str, endpoint: str | None = None) -> bool:
    """Whether a local file/folder or object exists."""
    if not is_url(url):
        return os.path.exists(local_path(url))
    fs, path = _filesystem(url, endpoint)
    return _retry(lambda: fs.exists(path), f"checking {url}", endpoint)


def remove_tree(url: str, endpoint: str | None = None) -> None:
    """Delete a file, folder or every object under a prefix; missing is fine."""
    if not is_url(url):
        import shutil

        path = local_path(url)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.unlink(path)
        return
    fs, path = _filesystem(url, endpoint)
    found = _retry(lambda: fs.find(path.rstrip("/")), f"listing {url}", endpoint)
    if fs.exists(path) and not fs.isdir(path):
        found = [path]
    if found:
        _retry(lambda: fs.rm(found), f"deleting {url}", endpoint)


def replace_tree(new: str, dest: str, endpoint: str | None = None) -> None:
    """Put the finished output folder/prefix `new` where `dest` is, replacing whatever `dest` held.

    Locally two renames (dest -> dest.previous, new -> dest), then the previous output is deleted. An object
    store has no rename: dest's objects are deleted, new's copied there (`_SUCCESS` last, so a reader that
    checks for it never takes a half-copied output for a whole one) and then deleted.
    """
    if not is_url(dest):
        if not os.path.isdir(local_path(new)):
            raise StorageError(f"replacing {dest}: {new} holds nothing")
        _replace_local(local_path(new), local_path(dest))
        return
    fs, dest_path = _filesystem(dest, endpoint)
    new_path = _filesystem(new, endpoint)[1].rstrip("/")
    keys = list_keys(new, None, endpoint)
    if not keys:  # refused: deleting DEST for nothing is what this is here to prevent
        raise StorageError(f"replacing {dest}: {new} holds nothing")
    remove_tree(dest, endpoint)
    markers = [k for k in keys if k.rsplit("/", 1)[-1] == "_SUCCESS"]
    for group in ([k for k in keys if k not in markers], markers):
        sources = [f"{new_path}/{k}" for k in group]
        targets = [f"{dest_path.rstrip('/')}/{k}" for k in group]
        if group:  # server-side copies: the bytes do not pass through here
            _retry(lambda s=sources, t=targets: fs.copy(s, t), f"copying {new} to {dest}", endpoint)
    remove_tree(new, endpoint)


def _replace_local(new: str, dest: str) -> None:
    previous = dest.rstrip(os.sep) + ".previous"
    remove_tree(previous)  # left by a run killed between the two renames below
    if os.path.lexists(dest):
        os.rename(dest, previous)
    os.rename(new, dest)
    remove_tree(previous)


def _local_entry(base: str, entry: str) -> str:
    """A relative list entry under the list's folder `base`, refused if a link resolves it to outside."""
    path = join(base, entry)
    if not safeio.is_inside(path, base):
        raise UnsafePathError(f"{entry!r}: leads outside the list's folder through a symlink")
    return path


def read_path_list(list_url: str, endpoint: str | None = None) -> list[str]:
    """Entries of a text file of paths/URLs (one a line; blank lines and `#` comments skipped), resolved.

    Full URLs are taken as they are; other entries are keys relative to the list's own folder and may not
    be absolute, contain `..`, or lead out of the folder through a link (`dirlink/passwd` with dirlink -> /etc).
    All bad lines are reported together in one UnsafePathError.
    """
    base = list_url.rsplit("/", 1)[0] if is_url(list_url) else os.path.dirname(local_path(list_url))
    out, bad = [], []
    for n, line in enumerate(read_text(list_url, endpoint).splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        try:
            out.append(check_url(entry) if is_url(entry) else _local_entry(base, entry))
        except UnsafePathError as exc:
            bad.append(f"line {n}: {exc}")
    if bad:
        raise UnsafePathError(f"{list_url}: {len(bad)} unsafe entr{'y' if len(bad) == 1 else 'ies'}:\n  "
                              + "\n  ".join(bad[:20]))
    return out
