"""Frames in an S3-compatible object store (backend/objectstorage.py), against a real S3 API
server over HTTP (tests/s3server.py): the bytes of every stored frame are an object's bytes,
nothing is ever replaced, a store that is down or misnamed is a clear, retryable error that
indexes nothing, and retention, forget and reconcile act on the objects."""

from __future__ import annotations

import errno
import io
import sys
import zlib
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from broker import free_port  # noqa: E402
from espcam.backend.layout import stamp  # noqa: E402
from espcam.backend.objectstorage import ObjectStorage, parse_frames_url  # noqa: E402
from espcam.backend.storage import Retention, StorageError, StorageRejected  # noqa: E402
from s3server import CREDENTIALS, S3Server  # noqa: E402

T0 = 1_760_000_000.0


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = S3Server(tmp_path_factory.mktemp("s3")).start()
    yield server
    server.stop()


@pytest.fixture
def creds(monkeypatch):
    for k, v in CREDENTIALS.items():
        monkeypatch.setenv(k, v)


_buckets = iter(range(10_000))


@pytest.fixture
def bucket(s3, creds):
    name = f"frames-{next(_buckets)}"
    s3.client().create_bucket(Bucket=name)
    return name


def jpeg(seed: int, size=(64, 48)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (seed * 37 % 256, seed * 91 % 256, 90)).save(buf, "JPEG")
    return buf.getvalue()


def crc(b: bytes) -> int:
    return zlib.crc32(b) & 0xFFFFFFFF


def open_store(tmp_path, s3, bucket, prefix="cams", **kw) -> ObjectStorage:
    return ObjectStorage(tmp_path / "data", f"s3://{bucket}/{prefix}", endpoint=s3.endpoint,
                         **kw)


def put(store: ObjectStorage, node: str, fid: int, data: bytes, at: float = T0):
    return store.store(node, fid, data, crc=crc(data), received_at=at, captured_at=at,
                       width=64, height=48, trigger="interval")


def test_a_stored_frame_is_an_object_with_its_bytes_and_its_row(tmp_path, s3, bucket):
    store = open_store(tmp_path, s3, bucket)
    frames = {i: jpeg(i) for i in range(1, 4)}
    stored = [put(store, "cam-1", i, data, T0 + i) for i, data in frames.items()]
    objects = s3.objects(bucket)
    for s, (i, data) in zip(stored, frames.items(), strict=True):
        key = f"cams/{s.path}"
        assert objects[key] == data, f"object of frame {i} differs"
        assert store.read(s) == data
        assert store.locate(s) == f"s3://{bucket}/{key}"
        assert s.path.startswith("cam-1/2025-10-09/")
    assert objects["cams/cam-1/latest.jpg"] == frames[3]
    assert [f.frame_id for f in store.frames("cam-1")] == [1, 2, 3]
    assert store.count("cam-1") == 3 and store.latest("cam-1").frame_id == 3
    assert len(objects) == 4  # three frames and latest.jpg, nothing temporary


def test_a_frame_stored_twice_is_kept_once_and_a_clash_is_never_replaced(tmp_path, s3, bucket):
    store = open_store(tmp_path, s3, bucket)
    a, b, c = jpeg(1), jpeg(2), jpeg(3)
    first = put(store, "cam-1", 7, a)
    assert put(store, "cam-1", 7, a) is None  # (node, id, crc) stored already
    # Same id and capture time, other bytes (a node that lost its flash): the CRC names it.
    second = put(store, "cam-1", 7, b)
    assert second.path == first.path.replace(".jpg", f"_{crc(b):08x}.jpg")
    # Both names taken by other bytes (written by someone else): refused, nothing replaced.
    s3.client().put_object(Bucket=bucket, Key=f"cams/{first.path[:-4]}_{crc(c):08x}.jpg",
                           Body=b"not ours")
    with pytest.raises(StorageRejected, match="already exist with other content"):
        put(store, "cam-1", 7, c)
    objects = s3.objects(bucket)
    assert objects[f"cams/{first.path}"] == a and objects[f"cams/{second.path}"] == b
    assert objects[f"cams/{first.path[:-4]}_{crc(c):08x}.jpg"] == b"not ours"
    assert not store.has("cam-1", 7, crc(c))


def test_an_object_whose_row_was_lost_is_indexed_when_the_frame_comes_again(tmp_path, s3,
                                                                           bucket):
    # The backend died between the PUT and the index row; the node sends the frame again.
    store = open_store(tmp_path, s3, bucket)
    data = jpeg(5)
    path = f"cam-1/2025-10-09/{stamp(T0)}_5.jpg"
    s3.client().put_object(Bucket=bucket, Key=f"cams/{path}", Body=data)
    stored = put(store, "cam-1", 5, data)
    assert stored.path == path
    assert set(s3.objects(bucket)) == {f"cams/{path}", "cams/cam-1/latest.jpg"}


def test_a_store_that_cannot_be_reached_is_a_retryable_error_and_nothing_is_indexed(tmp_path,
                                                                                   creds):
    store = ObjectStorage(tmp_path / "data", "s3://frames",
                          endpoint=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StorageError) as e:
        put(store, "cam-1", 1, jpeg(1))
    assert e.value.errno == errno.EIO
    assert "cannot store frame 1 of node cam-1 in s3://frames" in str(e.value)
    assert "Could not connect" in str(e.value)
    assert store.count("cam-1") == 0 and not store.has("cam-1", 1)
    with pytest.raises(StorageError, match="cannot list the frames"):
        store.reconcile()


def test_a_missing_bucket_is_named_in_the_error(tmp_path, s3, creds):
    store = open_store(tmp_path, s3, "no-such-bucket")
    with pytest.raises(StorageError, match="NoSuchBucket"):
        put(store, "cam-1", 1, jpeg(1))
    assert store.count("cam-1") == 0


def test_frames_url_must_name_a_bucket(tmp_path):
    assert parse_frames_url("s3://b") == ("b", "")
    assert parse_frames_url("s3://b/a/c/") == ("b", "a/c/")
    for bad in ("b/x", "https://b/x", "s3:///x", "s3://b/x?y=1"):
        with pytest.raises(ValueError, match="frames_url"):
            parse_frames_url(bad)
    from espcam.backend import config

    with pytest.raises(config.ConfigError, match="s3://bucket"):
        config.load(env={"ESPCAM_FRAMES_URL": "frames"})


def test_retention_and_forget_delete_the_objects(tmp_path, s3, bucket):
    store = open_store(tmp_path, s3, bucket, retention=Retention(max_age_days=1))
    old = [put(store, "cam-1", i, jpeg(i), T0 + i) for i in (1, 2)]
    # Two days later: the two old frames go, the new one stays.
    new = put(store, "cam-1", 3, jpeg(3), T0 + 2 * 86400)
    keys = set(s3.objects(bucket))
    assert f"cams/{new.path}" in keys
    assert not {f"cams/{s.path}" for s in old} & keys
    assert [f.frame_id for f in store.frames("cam-1")] == [3]
    put(store, "cam-2", 1, jpeg(9))
    assert store.forget_node("cam-1", delete_frames=True) == 1
    assert all(k.startswith("cams/cam-2/") for k in s3.objects(bucket))
    assert store.count("cam-1") == 0 and store.count("cam-2") == 1


def test_reconcile_indexes_orphan_objects_drops_rows_without_one_and_keeps_rows_when_empty(
        tmp_path, s3, bucket):
    store = open_store(tmp_path, s3, bucket)
    kept, gone = put(store, "cam-1", 1, jpeg(1)), put(store, "cam-1", 2, jpeg(2), T0 + 1)
    orphan = jpeg(3)
    client = s3.client()
    client.put_object(Bucket=bucket, Key="cams/cam-1/2025-10-09/20251009T084645.000Z_3.jpg",
                      Body=orphan)
    client.put_object(Bucket=bucket, Key="cams/cam-1/2025-10-09/notes.txt", Body=b"x")
    client.delete_object(Bucket=bucket, Key=f"cams/{gone.path}")
    stats = store.reconcile()
    assert stats == {"indexed": 1, "dropped_rows": 1, "skipped": 0}
    assert {f.frame_id for f in store.frames("cam-1")} == {1, 3}
    assert store.read(store.frame("cam-1", 3)) == orphan
    assert store.frame("cam-1", 1) == kept
    # A URL whose prefix holds nothing: most likely a wrong setting, so no row is dropped.
    elsewhere = ObjectStorage(tmp_path / "data", f"s3://{bucket}/other", endpoint=s3.endpoint)
    assert elsewhere.reconcile()["dropped_rows"] == 0
    assert elsewhere.count("cam-1") == 2


def test_several_workers_store_one_nodes_frames_at_once(tmp_path, s3, bucket):
    from concurrent.futures import ThreadPoolExecutor

    store = open_store(tmp_path, s3, bucket)
    frames = {i: jpeg(i, (160, 120)) for i in range(1, 25)}
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: put(store, "cam-1", i, frames[i], T0 + i), frames))
    objects = s3.objects(bucket)
    assert {f.frame_id: objects[f"cams/{f.path}"] for f in store.frames("cam-1")} == frames
    assert objects["cams/cam-1/latest.jpg"] == frames[24]  # never goes back


def test_without_boto3_the_error_says_which_extra_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 raises ImportError
    with pytest.raises(StorageError, match=r"pip install 'espcam\[s3\]'"):
        ObjectStorage(tmp_path / "data", "s3://frames")
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())


def test_retention_against_a_store_gone_away_is_a_storage_error_and_deletes_no_row(
        tmp_path, creds):
    server = S3Server(tmp_path / "s3").start()
    try:
        server.client().create_bucket(Bucket="frames")
        store = ObjectStorage(tmp_path / "data", "s3://frames", endpoint=server.endpoint,
                              retention=Retention(max_age_days=1))
        put(store, "cam-1", 1, jpeg(1))
        put(store, "cam-1", 2, jpeg(2), T0 + 10)
    finally:
        server.stop()
    with pytest.raises(StorageError, match="cannot delete 1 frame"):
        store.apply_retention("cam-1", now=T0 + 3 * 86400)
    assert [f.frame_id for f in store.frames("cam-1")] == [1, 2]  # rows kept: retried later
