"""Storage: local paths and S3 URLs alike (listing, reading, atomic writes), safe keys, retries when S3 is down."""

from __future__ import annotations

import logging
import os
import socket

import pytest
from click.testing import CliRunner

from moodlens.cli import main
from moodlens.jobs import storage
from moodlens.jobs.storage import StorageUnavailableError, UnsafePathError

pytest_plugins = ["s3_server"]


@pytest.mark.parametrize("key", ["../x.jpg", "a/../../x.jpg", "/etc/passwd", "a/..", "", "C:/x.jpg",
                                 "s3://b/x.jpg", "..\\x.jpg", "./"])
def test_safe_key_rejects_escapes(key):
    with pytest.raises(UnsafePathError):
        storage.safe_key(key)


def test_safe_key_normalizes():
    assert storage.safe_key("a/./b//c.jpg") == "a/b/c.jpg"
    assert storage.join("s3://bucket/pre/", "x/y.png") == "s3://bucket/pre/x/y.png"
    assert storage.join("photos", "x/y.png") == os.path.abspath("photos/x/y.png")


def test_list_images_local_sorted_filtered_and_contained(tmp_path):
    root = tmp_path / "root"
    for key in ["b/2.JPG", "a/1.png", "a/sub/3.webp", "c.txt", "d/notes.md"]:
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(b"x")
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(b"secret")
    (root / "link.jpg").symlink_to(outside)  # a symlink out of the root is never listed
    (root / "linkdir").symlink_to(tmp_path)  # nor are linked folders walked
    got = storage.list_images(str(root))
    assert got == [str(root / k) for k in ["a/1.png", "a/sub/3.webp", "b/2.JPG"]]
    assert storage.list_images(str(tmp_path / "missing")) == []


def test_atomic_local_write_replaces_and_leaves_no_temp(tmp_path):
    dest = tmp_path / "out" / "x.bin"
    storage.write_bytes(str(dest), b"one")
    storage.write_bytes(str(dest), b"two")
    assert dest.read_bytes() == b"two"
    assert os.listdir(dest.parent) == ["x.bin"]
    assert storage.read_bytes(f"file://{dest}") == b"two"


def test_path_list_resolves_relative_to_list_and_rejects_escapes(tmp_path):
    (tmp_path / "list.txt").write_text("# comment\n\na/1.jpg\ns3://bucket/k/2.jpg\n")
    assert storage.read_path_list(str(tmp_path / "list.txt")) == [str(tmp_path / "a/1.jpg"), "s3://bucket/k/2.jpg"]
    (tmp_path / "bad.txt").write_text("ok.jpg\n../up.jpg\n/etc/passwd\ns3://b/../x.jpg\n")
    with pytest.raises(UnsafePathError, match=r"3 unsafe entries(.|\n)*line 2(.|\n)*line 3(.|\n)*line 4"):
        storage.read_path_list(str(tmp_path / "bad.txt"))


def test_s3_roundtrip_listing_and_prefix_isolation(s3_env):
    bucket = s3_env.new_bucket()
    root = f"s3://{bucket}/photos"
    for key in ["b/2.jpg", "a/1.PNG", "a/readme.txt"]:
        storage.write_bytes(f"{root}/{key}", key.encode())
    storage.write_bytes(f"s3://{bucket}/photos-other/x.jpg", b"other prefix")
    assert storage.list_images(root) == [f"{root}/a/1.PNG", f"{root}/b/2.jpg"]
    assert storage.list_images(root + "/") == [f"{root}/a/1.PNG", f"{root}/b/2.jpg"]
    assert storage.read_bytes(f"{root}/b/2.jpg") == b"b/2.jpg"
    storage.write_bytes(f"{root}/b/2.jpg", b"new")  # overwrite: one PUT, atomic per object
    assert storage.read_bytes(f"{root}/b/2.jpg") == b"new"
    assert storage.exists(f"{root}/a/1.PNG") and not storage.exists(f"{root}/nope.jpg")
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(f"{root}/nope.jpg")
    storage.write_bytes(f"s3://{bucket}/lists/l.txt", b"x/1.jpg\ns3://other/y.jpg\n")
    assert storage.read_path_list(f"s3://{bucket}/lists/l.txt") == [f"s3://{bucket}/lists/x/1.jpg",
                                                                      "s3://other/y.jpg"]
    storage.remove_tree(root)
    assert storage.list_images(root) == []
    assert storage.list_images(f"s3://{bucket}/photos-other") == [f"s3://{bucket}/photos-other/x.jpg"]


def test_s3_objects_written_by_another_process_after_a_listing_are_seen(s3_env):
    """The root cause of issue 13 item 5: s3fs answered from its listing cache of a prefix, so a part a pool
    worker wrote after the parent listed the parts read as FileNotFoundError (and did not exist)."""
    bucket = s3_env.new_bucket()
    parts = f"s3://{bucket}/out.parquet.parts"
    storage.write_bytes(f"{parts}/part-a.parquet", b"a")
    assert storage.list_keys(parts) == ["part-a.parquet"]  # the parent lists the finished parts
    s3_env.filesystem().pipe_file(f"{bucket}/out.parquet.parts/part-b.parquet", b"b")  # another client writes
    assert storage.read_bytes(f"{parts}/part-b.parquet") == b"b"  # read first, as batch does
    assert storage.exists(f"{parts}/part-b.parquet")
    assert storage.list_keys(parts) == ["part-a.parquet", "part-b.parquet"]


def _tree(root: str) -> dict[str, bytes]:
    return {k: storage.read_bytes(storage.join(root, k)) for k in storage.list_keys(root)}


@pytest.mark.parametrize("where", ["local", "s3"])
def test_replace_tree_swaps_a_finished_output_in(where, tmp_path, request):
    base = str(tmp_path) if where == "local" else f"s3://{request.getfixturevalue('s3_env').new_bucket()}"
    dest, new = f"{base}/out", f"{base}/out.incomplete"
    for key, data in {"part-0.parquet": b"old0", "part-1.parquet": b"old1", "_SUCCESS": b""}.items():
        storage.write_bytes(storage.join(dest, key), data)
    for key, data in {"part-0.parquet": b"new0", "sub/part-2.parquet": b"new2", "_SUCCESS": b""}.items():
        storage.write_bytes(storage.join(new, key), data)
    storage.replace_tree(new, dest)
    assert _tree(dest) == {"_SUCCESS": b"", "part-0.parquet": b"new0", "sub/part-2.parquet": b"new2"}
    assert _tree(new) == {} and not storage.exists(f"{base}/out.previous")
    storage.write_bytes(storage.join(new, "part-9.parquet"), b"9")
    storage.replace_tree(new, f"{base}/fresh")  # nothing there before
    assert _tree(f"{base}/fresh") == {"part-9.parquet": b"9"}
    with pytest.raises(storage.StorageError, match="holds nothing"):
        storage.replace_tree(f"{base}/nothing", dest)


def test_missing_bucket_is_a_clear_error(s3_env):
    with pytest.raises(storage.StorageError, match="bucket 'no-such-bucket' not found"):
        storage.list_images("s3://no-such-bucket/photos")
    with pytest.raises(storage.StorageError, match="writing s3://no-such-bucket/x.parquet: bucket"):
        storage.write_bytes("s3://no-such-bucket/x.parquet", b"1")


def test_explicit_endpoint_beats_environment(s3_env, monkeypatch):
    bucket = s3_env.new_bucket()
    monkeypatch.setenv(storage.S3_ENDPOINT_ENV, f"http://127.0.0.1:{_closed_port()}")
    storage.write_bytes(f"s3://{bucket}/k.jpg", b"1", endpoint=s3_env.endpoint)
    assert storage.list_images(f"s3://{bucket}", endpoint=s3_env.endpoint) == [f"s3://{bucket}/k.jpg"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_s3_down_retries_then_clear_error(monkeypatch, caplog):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv(storage.RETRIES_ENV, "3")
    monkeypatch.setenv(storage.BACKOFF_ENV, "0.01")
    with caplog.at_level(logging.WARNING, logger="moodlens.jobs.storage"):
        with pytest.raises(StorageUnavailableError, match=rf"reading s3://b/k.jpg: could not reach {endpoint} "
                                                           r"after 3 attempts"):
            storage.read_bytes("s3://b/k.jpg", endpoint=endpoint)
    assert len([r for r in caplog.records if "retry" in r.getMessage()]) == 2
    with pytest.raises(StorageUnavailableError, match="writing"):
        storage.write_bytes("s3://b/k.jpg", b"x", endpoint=endpoint)


def test_batch_cli_reports_s3_down(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv(storage.RETRIES_ENV, "2")
    monkeypatch.setenv(storage.BACKOFF_ENV, "0.01")
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    result = CliRunner().invoke(main, ["batch", "s3://bucket/photos", str(tmp_path / "out.parquet"),
                                       "--s3-endpoint", endpoint, "--no-progress"])
    assert result.exit_code == 1
    assert f"listing s3://bucket/photos: could not reach {endpoint} after 2 attempts" in result.output
    assert "Traceback" not in result.output
