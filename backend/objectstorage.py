"""Frames as objects in an S3-compatible object store (AWS S3, MinIO, Ceph RGW, Garage...),
their index in SQLite under the data directory as ever: the second FrameStorage
(framestorage.py), beside the local disk's (storage.py). Needs the `s3` extra (boto3).

Keys follow the local layout under the URL's prefix (docs/backend.md, "Object storage"):

    <prefix><node>/latest.jpg
    <prefix><node>/<YYYY-MM-DD>/<timestamp>_<frame id>.jpg
    <prefix><node>/<YYYY-MM-DD>/<timestamp>_<frame id>_<crc32 hex>.jpg   when the first is taken

A PUT that the store answered with success is durable by the store's own contract, so a frame
is indexed, announced and confirmed only after its PUT returned. Objects appear whole or not at
all, so there are no temporary objects; an object is never replaced (`If-None-Match: *`), and a
crash between the PUT and the index row leaves an object without a row, which `reconcile`
indexes on the next start.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import logging
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from espcam.backend.indexed import (
    IndexedFrames,
    Retention,
    StorageError,
    StorageRejected,
    due_for_deletion,
    open_index,
    store_failed,
)
from espcam.backend.layout import DATE_DIR_RE, FILE_RE, stamp
from espcam.backend.names import check_node_id, is_node_id
from espcam.backend.reconcile import index_orphan
from espcam.backend.records import StoredFrame

log = logging.getLogger("espcam.storage")

# The answers of a store to a conditional PUT whose key exists (S3 says 412; a concurrent
# conditional write to the same key may get 409).
_TAKEN = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
# Per request. A store worker that waited minutes on a dead store would hold its lane; the
# lanes retry the frame every retry_interval instead, and the node keeps it meanwhile.
CONNECT_TIMEOUT, READ_TIMEOUT = 5.0, 20.0


class ObjectStoreError(StorageError):
    """The object store refused a request or could not be reached; worth retrying."""


def parse_frames_url(url: str) -> tuple[str, str]:
    """(bucket, key prefix ending in '/' or empty) of an `s3://bucket[/prefix]` URL;
    ValueError saying what is wrong otherwise."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"frames_url {url!r} is not of the form s3://bucket[/prefix]")
    if parts.query or parts.fragment:
        raise ValueError(f"frames_url {url!r} may not have a query or fragment")
    prefix = parts.path.strip("/")
    return parts.netloc, f"{prefix}/" if prefix else ""


def _client(endpoint: str, region: str, pool: int) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise StorageError(errno.ENOPKG, "frames_url (object storage) needs boto3: "
                           "pip install 'espcam[s3]'") from None
    config = Config(
        connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT,
        retries={"max_attempts": 2, "mode": "standard"}, max_pool_connections=pool,
        # Content-MD5 is what every S3-compatible store checks; the newer CRC trailers are
        # refused by some of them.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required")
    # Credentials come from boto3's own chain (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY,
    # ~/.aws, an instance role): never from espcam's settings, so they are in no config file.
    return boto3.client("s3", endpoint_url=endpoint or None, region_name=region or None,
                        config=config)


def _error_code(e: Exception) -> str:
    response = getattr(e, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _describe(e: Exception) -> str:
    response = getattr(e, "response", None)
    if response:
        err = response.get("Error", {})
        return f"the object store says {err.get('Code', '?')}: {err.get('Message', '')}".rstrip()
    return f"{type(e).__name__}: {e}"


class ObjectStorage(IndexedFrames):
    """Frames as objects under `url` (s3://bucket[/prefix]) at `endpoint` (empty: AWS), the
    index in `data_dir`. Safe to use from several threads at once, as Storage is."""

    def __init__(self, data_dir: Path | str, url: str, *, endpoint: str = "", region: str = "",
                 retention: Retention | None = None, readonly: bool = False,
                 pool: int = 16) -> None:
        super().__init__()
        self.root = Path(data_dir).resolve()
        self.url = url.rstrip("/")
        try:
            self.bucket, self.prefix = parse_frames_url(url)
        except ValueError as e:
            raise StorageError(errno.EINVAL, str(e)) from None
        self.retention = retention or Retention()
        self._s3 = _client(endpoint, region, pool)
        from botocore.exceptions import BotoCoreError, ClientError
        self._errors: tuple[type[Exception], ...] = (BotoCoreError, ClientError)
        self.index = open_index(self.root, readonly)

    def close(self) -> None:
        self.index.close()
        self._s3.close()  # its connection pool

    def _key(self, rel: str) -> str:
        return self.prefix + rel

    def _failed(self, doing: str, e: Exception) -> ObjectStoreError:
        return ObjectStoreError(errno.EIO, f"cannot {doing} in {self.url}: {_describe(e)}")

    # -- reading (the rest: IndexedFrames, from the index) ---------------------------------

    def read(self, stored: StoredFrame) -> bytes:
        try:
            return self._get(stored.path)
        except self._errors as e:
            raise self._failed(f"read {stored.path}", e) from e

    def _get(self, rel: str) -> bytes:
        return self._s3.get_object(Bucket=self.bucket, Key=self._key(rel))["Body"].read()

    def locate(self, stored: StoredFrame) -> str:
        return f"s3://{self.bucket}/{self._key(stored.path)}"

    # -- writing ---------------------------------------------------------------------------

    def store(self, node: str, frame_id: int, jpeg: bytes, *, crc: int, received_at: float,
              captured_at: float | None = None, width: int | None = None,
              height: int | None = None, trigger: str | None = None) -> StoredFrame | None:
        """As Storage.store: None if (node, frame_id, crc) is stored already; StorageError
        (ObjectStoreError) when the store refuses or cannot be reached, StorageRejected when
        the index never will take it, in both cases after deleting the object this call
        created, if any."""
        check_node_id(node)
        taken = captured_at if captured_at is not None else received_at
        day = datetime.fromtimestamp(taken, UTC).strftime("%Y-%m-%d")
        name = f"{node}/{day}/{stamp(taken)}_{frame_id}"
        created: str | None = None
        try:
            if self.has(node, frame_id, crc):
                return None
            placed, fresh = self._place([f"{name}.jpg", f"{name}_{crc:08x}.jpg"], jpeg)
            created = placed if fresh else None
            stored = StoredFrame(node, frame_id, captured_at, received_at, len(jpeg), width,
                                 height, trigger, crc, placed)
            self.index.add(stored, taken)
        except (*self._errors, sqlite3.Error, StorageRejected) as e:
            if created is not None:  # only what this call created goes
                self._delete_quietly(created)
            where = f"frame {frame_id} of node {node} in {self.url}"
            if isinstance(e, self._errors):
                raise ObjectStoreError(errno.EIO, f"cannot store {where}: {_describe(e)}") from e
            raise store_failed(where, e) from e
        try:
            # Under the node's lock, as on the local disk: latest.jpg never goes back.
            with self._lock_of(node):
                if self.is_latest(node, stored.path):
                    self._s3.copy_object(
                        Bucket=self.bucket, Key=self._key(f"{node}/latest.jpg"),
                        CopySource={"Bucket": self.bucket, "Key": self._key(stored.path)},
                        ContentType="image/jpeg", MetadataDirective="REPLACE")
                self._apply_retention(node, received_at)
        except (*self._errors, OSError, sqlite3.Error) as e:
            log.error("frame %d of node %s is stored, but latest.jpg or retention failed: %s",
                      frame_id, node, _describe(e) if isinstance(e, self._errors) else e)
        return stored

    def _place(self, names: list[str], jpeg: bytes) -> tuple[str, bool]:
        """PUT the frame under the first free name of `names`, never replacing an object.
        Returns (name, created); created is False when an object with exactly these bytes
        already had the name (an earlier run stored it but not its row)."""
        md5 = base64.b64encode(hashlib.md5(jpeg).digest()).decode()
        for rel in names:
            try:
                self._s3.put_object(Bucket=self.bucket, Key=self._key(rel), Body=jpeg,
                                    ContentMD5=md5, ContentType="image/jpeg", IfNoneMatch="*")
                return rel, True
            except self._errors as e:
                if _error_code(e) not in _TAKEN:
                    raise
            if self._get(rel) == jpeg:
                return rel, False
        raise StorageRejected(
            f"{', '.join(names)} already exist with other content; they are kept and this "
            "frame is not stored")

    def _delete_quietly(self, rel: str) -> None:
        try:
            self._s3.delete_object(Bucket=self.bucket, Key=self._key(rel))
        except self._errors as e:
            # reconcile on the next start indexes it
            log.error("cannot delete %s from %s: %s", rel, self.url, _describe(e))

    def _delete(self, rels: list[str]) -> list[str]:
        """Delete objects (deleting a missing one succeeds); returns those the store refused
        to delete. ObjectStoreError when it cannot be asked."""
        failed = []
        for start in range(0, len(rels), 1000):  # DeleteObjects takes 1 000 at most
            batch = rels[start:start + 1000]
            try:
                answer = self._s3.delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": self._key(r)} for r in batch], "Quiet": True})
            except self._errors as e:
                raise self._failed(f"delete {len(batch)} frame(s)", e) from e
            for err in answer.get("Errors", []):
                failed.append(err["Key"][len(self.prefix):])
                log.error("cannot delete %s: %s", err["Key"], err.get("Message", ""))
        return failed

    def forget_node(self, node: str, delete_frames: bool = False) -> int:
        """Drop the node's row; with `delete_frames` also its frames and latest.jpg."""
        check_node_id(node)
        deleted = 0
        if delete_frames:
            paths = [path for _, path in self.index.paths(node)]
            failed = set(self._delete([*paths, f"{node}/latest.jpg"]))
            deleted = sum(1 for p in paths if p not in failed)
            self.index.delete_node_frames(node)
        self.index.delete_node(node)
        return deleted

    # -- retention -------------------------------------------------------------------------

    def apply_retention(self, node: str, now: float | None = None) -> int:
        """As Storage.apply_retention; returns the number of frames deleted."""
        with self._lock_of(node):
            return self._apply_retention(node, time.time() if now is None else now)

    def _apply_retention(self, node: str, now: float) -> int:
        doomed = due_for_deletion(self.index, node, self.retention, now)
        if not doomed:
            return 0
        failed = set(self._delete([r["path"] for r in doomed]))
        deleted = 0
        for r in doomed:
            if r["path"] not in failed:
                self.index.remove(node, r["path"], r["bytes"])
                deleted += 1
        if deleted:
            log.info("retention: deleted %d old frame(s) of node %s", deleted, node)
        return deleted

    def apply_retention_all(self, now: float | None = None) -> dict[str, int]:
        return {node: self.apply_retention(node, now=now)
                for node in self.index.frame_nodes() if is_node_id(node)}

    # -- start-up consistency --------------------------------------------------------------

    def reconcile(self) -> dict[str, int]:
        """Make objects and index agree after a crash: index objects of the layout that have
        no row, drop rows whose object is gone. An empty listing drops nothing: that is a
        wrong frames_url or bucket far more often than every frame deleted by hand."""
        stats = {"indexed": 0, "dropped_rows": 0, "skipped": 0}
        try:
            listed = self._list()
            known = {path for _, path in self.index.paths()}
            for rel, modified in listed.items():
                if rel in known:
                    continue
                node, _, file = rel.split("/")
                m = FILE_RE.fullmatch(file)
                assert m is not None  # _list keeps only names of the layout
                stats[index_orphan(self.index, node, self._get(rel), rel, m, modified,
                                   f"s3://{self.bucket}/{self._key(rel)}")] += 1
        except self._errors as e:
            raise self._failed("list the frames", e) from e
        if listed or not known:
            for node, path in self.index.paths():
                if path not in listed:
                    self.index.drop(node, path)
                    stats["dropped_rows"] += 1
        else:
            log.error("reconcile: no frame objects under %s, but the index lists %d frames; "
                      "rows kept (is frames_url right?)", self.url, len(known))
        self.index.forget_totals()
        if any(stats.values()):
            log.info("reconcile: %s", ", ".join(f"{k} {v}" for k, v in stats.items()))
        return stats

    def _list(self) -> dict[str, float]:
        """Every frame object of the layout under the prefix, with its last-modified time."""
        found = {}
        pages = self._s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(self.prefix):]
                parts = rel.split("/")
                if (len(parts) == 3 and is_node_id(parts[0]) and DATE_DIR_RE.fullmatch(parts[1])
                        and FILE_RE.fullmatch(parts[2])):
                    found[rel] = obj["LastModified"].timestamp()
        return found
