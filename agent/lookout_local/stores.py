"""Where the service reads input and writes results: a bucket name → an agent.pipeline.store ObjectStore.

``file:///root/`` maps bucket ``b`` to the folder ``/root/b`` (FileStore), so an agent writing to
``file:///root/b/prefix/`` and this service reading bucket ``b`` under ``prefix/`` see the same files.
``s3`` (or ``s3://``) uses real S3 through boto3 with the standard credential chain; boto3 itself honours
``AWS_ENDPOINT_URL_S3`` (e.g. a moto or MinIO endpoint).
"""

from __future__ import annotations

import threading
from pathlib import Path
from urllib.parse import unquote, urlparse

from agent.core.errors import ConfigError
from agent.pipeline.store import BUCKET_PATTERN, FileStore, ObjectStore, S3Store


def location(store: ObjectStore | None, bucket: str, key: str = "") -> str:
    """Where ``key`` of ``bucket`` really is, for messages an operator acts on: the path below the folder for a
    folder store (``/var/lib/l4e-lookout/store/b/in/pump_``), ``s3://bucket/key`` otherwise (and when the store
    is not known)."""
    if isinstance(store, FileStore):
        return f"{store.root}/{key}"
    return f"s3://{bucket}/{key}"


class Stores:
    """Resolve buckets to stores; S3 clients are made once, lazily (no I/O at construction)."""

    def __init__(self, url: str, s3_client_factory=None) -> None:
        parsed = urlparse(url)
        if url in ("s3", "s3://"):
            self.kind, self.root = "s3", None
        elif parsed.scheme == "file" and parsed.netloc in ("", "localhost") and parsed.path.startswith("/"):
            self.kind, self.root = "file", Path(unquote(parsed.path))
        else:
            raise ConfigError(f"unsupported store {url!r}; allowed: file:///absolute/folder/ or s3")
        self.url = url
        # what start-up says it serves: the folder itself, or S3 through the standard credential chain
        self.description = f"folder {self.root}/ (bucket b = {self.root}/b/)" if self.kind == "file" else \
            "Amazon S3 (standard credential chain, AWS_ENDPOINT_URL_S3 honoured)"
        self._factory = s3_client_factory
        self._client = None
        self._lock = threading.Lock()

    def bucket(self, name: str) -> ObjectStore:
        """The store for bucket ``name`` (a folder below the root for ``file://``)."""
        if not BUCKET_PATTERN.match(name):
            raise ConfigError(f"bucket {name!r} does not match {BUCKET_PATTERN.pattern}")
        if self.kind == "file":
            return FileStore(self.root / name)
        with self._lock:
            if self._client is None:
                if self._factory is None:
                    import boto3

                    self._client = boto3.client("s3")
                else:
                    self._client = self._factory()
        return S3Store(self._client, name)
