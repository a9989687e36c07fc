"""The FrameStorage the settings ask for: the local disk (storage.py), or an S3-compatible
object store when `frames_url` is set (objectstorage.py)."""

from __future__ import annotations

from espcam.backend.config import Settings
from espcam.backend.framestorage import FrameStorage
from espcam.backend.objectstorage import ObjectStorage
from espcam.backend.storage import Storage


def open_storage(settings: Settings, *, readonly: bool = False) -> FrameStorage:
    """Raises StorageError, saying why, when the index cannot be opened (or boto3, which
    object storage needs, is missing)."""
    if settings.frames_url:
        # A connection per store worker and a few for announcing and retention.
        return ObjectStorage(settings.data_dir, settings.frames_url,
                             endpoint=settings.s3_endpoint, region=settings.s3_region,
                             retention=settings.retention(), readonly=readonly,
                             pool=settings.store_workers + 4)
    return Storage(settings.data_dir, settings.retention(), readonly=readonly)
