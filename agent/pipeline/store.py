"""Object stores: one bucket (or one local folder) with put/get/list/delete of whole objects.

S3Store talks to S3 or any S3-compatible endpoint through a boto3 client made by the caller (the standard
credential chain and ``AWS_ENDPOINT_URL_S3`` apply; keys never come from the asset file). FileStore keeps each
object as a file below a root folder, key path segments as sub-folders, written atomically (tmp, fsync,
rename) so a reader never sees a partial object. Every call may block; the uploader bounds each put with
its own total timeout (a hung NFS folder, an endpoint that never answers) and S3 clients made here also
have connect and read timeouts.

``open_location(url)`` turns ``s3://bucket/prefix/`` or ``file:///abs/dir/`` into (store, prefix). For a
``file://`` URL the whole path is the folder and the prefix is empty, so the L4E service reading
``<store root>/<bucket>/<prefix>`` sees exactly what the agent wrote to ``file:///<store root>/<bucket>/<prefix>``.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

from agent.core.atomic import write_atomic
from agent.core.errors import ConfigError, StoreError, StoreUnavailable

# botocore's S3Bucket pattern for the L4E S3InputConfiguration
BUCKET_PATTERN = re.compile(r"^[a-z0-9][\.\-a-z0-9]{1,61}[a-z0-9]$")


class ObjectStore(Protocol):
    """Whole-object storage in one bucket. Keys are '/'-separated text. Every method may block (run in a thread)."""

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` at ``key``, replacing any object there. Raises StoreUnavailable (retry) or StoreError."""

    def get(self, key: str) -> bytes:
        """The object's bytes. Raises KeyError when absent, StoreUnavailable or StoreError otherwise."""

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[str]:
        """Keys that start with ``prefix``, in lexicographic order; only those > ``start_after`` when given
        (S3's StartAfter: a store skips what comes before instead of sending it)."""

    def delete(self, key: str) -> None:
        """Remove the object; absent is not an error."""

    def describe(self) -> str:
        """A human-readable location, for logs."""


def unsafe_key_reason(key: str) -> str | None:
    """Why ``key`` (an object key, or a prefix ending in '/') could name something outside a folder store's root
    or alias another key there, or None when it cannot: a leading '/', '//', a '.' or '..' segment, a backslash
    or NUL. S3 itself takes such keys literally; the local service and FileStore refuse them."""
    if key.startswith("/"):
        return "starts with '/'"
    if "//" in key:
        return "contains '//'"
    if "\\" in key:
        return "contains a backslash"
    if "\x00" in key:
        return "contains NUL"
    if any(segment in (".", "..") for segment in key.split("/")):
        return "has a '.' or '..' segment"
    return None


class FileStore:
    """A local folder as a bucket. Keys map to paths below ``root``.

    Nothing outside ``root`` is ever listed, read, written or deleted: keys and prefixes failing
    ``unsafe_key_reason`` are refused (StoreError), a path whose symlinks lead out of ``root`` is refused, and
    listing neither descends into symlinked folders nor reports a symlink whose target is outside ``root``.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def _inside(self, path: Path | str) -> bool:
        """Whether ``path``, its symlinks resolved, is ``root`` or below it (root resolved too: the root itself
        may be a link an operator made, e.g. to another disk)."""
        return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(self.root))

    def _path(self, key: str) -> Path:
        reason = "empty" if not key else unsafe_key_reason(key)
        if reason:
            raise StoreError(f"invalid object key {key!r}: {reason}")
        path = self.root / key
        if not self._inside(path):
            raise StoreError(f"object key {key!r} leads out of {self.root} through a symlink")
        return path

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data)
        except PermissionError as exc:
            raise StoreError(f"cannot write {path}: {exc}") from exc
        except OSError as exc:
            # a full disk or an unmounted share may come back: retriable
            raise StoreUnavailable(f"cannot write {path}: {exc}") from exc

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None
        except OSError as exc:
            raise StoreUnavailable(f"cannot read {path}: {exc}") from exc

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[str]:
        reason = unsafe_key_reason(prefix)
        if reason:
            raise StoreError(f"invalid prefix {prefix!r}: {reason}")
        # walk only the folder the prefix names (not the whole bucket): listing runs on every window
        folder = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
        start = self.root / folder
        if not start.is_dir() or not self._inside(start):
            return iter(())
        keys = []
        pending = [(start, folder)]
        while pending:
            path, rel = pending.pop()
            try:
                with os.scandir(path) as entries:
                    found = list(entries)
            except OSError:  # vanished or unreadable meanwhile: as os.walk, skipped
                continue
            for entry in found:
                key = rel + entry.name
                if entry.is_dir(follow_symlinks=False):
                    pending.append((Path(entry.path), key + "/"))
                    continue
                if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                    continue
                if not key.startswith(prefix) or (start_after is not None and key <= start_after):
                    continue
                if entry.is_symlink() and not (self._inside(entry.path) and os.path.isfile(entry.path)):
                    continue  # a link out of the store (or to a folder) is not an object of it
                if entry.is_symlink() or entry.is_file(follow_symlinks=False):
                    keys.append(key)
        return iter(sorted(keys))

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def describe(self) -> str:
        return f"file://{self.root}/"


class S3Store:
    """One S3 bucket through a boto3 S3 client."""

    def __init__(self, client, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    def _call(self, fn, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in ("NoSuchKey", "404"):
                raise KeyError(kwargs.get("Key")) from None
            if status >= 500 or code in ("SlowDown", "RequestTimeout", "Throttling", "ThrottlingException"):
                raise StoreUnavailable(f"s3://{self.bucket}: {code or status}: {exc}") from exc
            raise StoreError(f"s3://{self.bucket}: {code or status}: {exc}") from exc
        except BotoCoreError as exc:  # connection refused, timeouts, DNS: the network may come back
            raise StoreUnavailable(f"s3://{self.bucket}: {exc}") from exc

    def put(self, key: str, data: bytes) -> None:
        self._call(self.client.put_object, Key=key, Body=data)

    def get(self, key: str) -> bytes:
        return self._call(self.client.get_object, Key=key)["Body"].read()

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[str]:
        token = None
        while True:
            kwargs = {"Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            elif start_after is not None:
                kwargs["StartAfter"] = start_after
            page = self._call(self.client.list_objects_v2, **kwargs)
            for item in page.get("Contents", []):
                yield item["Key"]
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    def delete(self, key: str) -> None:
        self._call(self.client.delete_object, Key=key)

    def describe(self) -> str:
        return f"s3://{self.bucket}/"




def parse_location(url: str) -> tuple[str, str, str]:
    """Split a location URL into (scheme, bucket-or-folder, prefix).

    ``s3://bucket/pre/fix/`` → ("s3", "bucket", "pre/fix/"); ``file:///a/b/`` → ("file", "/a/b", "").
    Raises ConfigError (without file/key: the caller adds them) when the URL is not one of these forms.
    """
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        bucket = parsed.netloc
        prefix = unquote(parsed.path.lstrip("/"))
        if not BUCKET_PATTERN.match(bucket):
            raise ConfigError(f"bucket {bucket!r} does not match {BUCKET_PATTERN.pattern}")
        if prefix and not prefix.endswith("/"):
            raise ConfigError(f"prefix {prefix!r} must end with '/' (L4E reads files directly under the prefix)")
        if len(prefix) > 1023:
            raise ConfigError("prefix is longer than 1023 characters")
        return "s3", bucket, prefix
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(f"file URL must be absolute (file:///path/), got {url!r}")
        path = unquote(parsed.path)
        if not path.startswith("/"):
            raise ConfigError(f"file URL must be absolute (file:///path/), got {url!r}")
        return "file", path.rstrip("/") or "/", ""
    raise ConfigError(f"unsupported location {url!r}; allowed: s3://bucket/prefix/ or file:///absolute/folder/")


def s3_client(connect_timeout_secs: float = 10.0, read_timeout_secs: float = 60.0):
    """A boto3 S3 client with bounded connect and read times (botocore's default read timeout is 60 s per
    socket read and it retries on its own; the agent's callers retry with their own backoff, so one attempt)."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", config=Config(connect_timeout=connect_timeout_secs, read_timeout=read_timeout_secs,
                                            retries={"mode": "standard", "total_max_attempts": 1}))


def open_location(url: str, s3_client_factory=None, *, connect_timeout_secs: float = 10.0,
                  read_timeout_secs: float = 60.0) -> tuple[ObjectStore, str]:
    """(store, prefix) for a location URL. ``s3_client_factory()`` makes the boto3 S3 client when needed
    (default: ``s3_client`` with the given timeouts)."""
    scheme, where, prefix = parse_location(url)
    if scheme == "file":
        return FileStore(where), ""
    if s3_client_factory is None:

        def s3_client_factory():
            return s3_client(connect_timeout_secs, read_timeout_secs)

    return S3Store(s3_client_factory(), where), prefix
