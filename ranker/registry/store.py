"""Object stores behind the model registry: a local folder or an S3 bucket, one small interface.

Keys are ``/``-separated paths relative to the store root (``search_ranker/stages/production.json``);
both backends lay them out identically, so a registry folder can be synced to a bucket as is.

The registry needs only four guarantees, which both backends give:

* ``put`` is atomic: readers see the old object or the new one, never a torn write
  (local: temp file + fsync + ``os.replace``; S3: a single PUT).
* ``put(..., if_absent=True)`` creates or fails with :class:`PreconditionFailed` (local: ``os.link``,
  which refuses an existing target; S3: ``If-None-Match: *``).
* ``put(..., if_etag=E)`` replaces only if the object's current etag is E, else
  :class:`PreconditionFailed` (local: under an ``fcntl.flock`` on a hidden sidecar lock file
  ``.{file}.lock``, compare the sha256 then ``os.replace``; S3: ``If-Match: E``, which S3 evaluates
  atomically server-side).
* ``get`` returns bytes and etag, or None when the key does not exist.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol
from urllib.parse import urlparse

from ranker.errors import RankerError


class PreconditionFailed(RankerError):
    """A conditional write lost: the object exists (if_absent) or changed since it was read (if_etag)."""


@dataclass(frozen=True)
class StoredObject:
    data: bytes
    etag: str


class ObjectStore(Protocol):
    """What the registry needs from a storage backend."""

    def describe(self) -> str:
        """Where the store lives, for messages (``file:///...`` or ``s3://bucket/prefix``)."""

    def get(self, key: str) -> StoredObject | None:
        """The object's bytes and etag, or None when it does not exist."""

    def put(self, key: str, data: bytes, *, if_absent: bool = False, if_etag: str | None = None) -> str:
        """Write atomically; returns the new etag. Raises PreconditionFailed when a condition fails."""

    def delete(self, key: str) -> None:
        """Remove the object if present (used only to clean up a failed upload)."""

    def list_keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (recursive), sorted."""

    def list_children(self, prefix: str) -> list[str]:
        """Immediate child names (``dir`` components) under ``prefix``, sorted."""

    def local_path(self, key: str) -> Path | None:
        """The key's file when the store is a local folder (lets readers skip a copy), else None."""


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise RankerError(f"invalid registry key {key!r}")
    return key


# --------------------------------------------------------------------------------------------
# Local folder
# --------------------------------------------------------------------------------------------


class LocalStore:
    """A registry in a local (or network-mounted POSIX) folder."""

    def __init__(self, *, root: Path) -> None:
        self.root = Path(root)

    def describe(self) -> str:
        return self.root.resolve().as_uri() if self.root.is_absolute() else str(self.root)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*_check_key(key).split("/"))

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def get(self, key: str) -> StoredObject | None:
        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            return None
        except OSError as exc:
            raise RankerError(f"cannot read {key} from registry {self.describe()}: {exc}") from exc
        # Content hash as the etag: the compare-and-swap below compares contents, which is what matters
        # (pointer documents carry a timestamp and event id, so two different writes never collide).
        return StoredObject(data=data, etag=hashlib.sha256(data).hexdigest())

    def put(self, key: str, data: bytes, *, if_absent: bool = False, if_etag: str | None = None) -> str:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._write_temp(path, data)
            try:
                if if_absent:
                    # link() refuses an existing target atomically and the target appears fully written;
                    # no lock needed (a compare-and-swap never creates a missing key).
                    try:
                        os.link(tmp, path)
                    except FileExistsError:
                        raise PreconditionFailed(f"{key} already exists") from None
                elif if_etag is not None:
                    with self._locked(path):
                        current = self.get(key)
                        if current is None or current.etag != if_etag:
                            raise PreconditionFailed(f"{key} changed since it was read")
                        os.replace(tmp, path)
                else:
                    os.replace(tmp, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            self._fsync_dir(path.parent)
        except PreconditionFailed:
            raise
        except OSError as exc:
            raise RankerError(f"cannot write {key} to registry {self.describe()}: {exc}") from exc
        return hashlib.sha256(data).hexdigest()

    @staticmethod
    def _write_temp(path: Path, data: bytes) -> Path:
        # Hidden name in the same folder: same filesystem for os.replace, and listings skip dot-files.
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return tmp

    @staticmethod
    def _fsync_dir(folder: Path) -> None:
        # Make the rename durable, not only atomic; some filesystems refuse fsync on folders.
        with contextlib.suppress(OSError):
            fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    @contextlib.contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        # flock locks belong to the open file description, so separate opens exclude each other across
        # threads of one process as well as across processes. The lock file is never deleted: deleting
        # it would let a waiter lock an unlinked inode while a newcomer locks a fresh one.
        lock_path = path.with_name(f".{path.name}.lock")
        with open(lock_path, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def list_keys(self, prefix: str) -> list[str]:
        base = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        if not base.is_dir():
            return []
        keys = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self.root)
            for name in filenames:
                if not name.startswith("."):  # temp and lock files
                    keys.append("/".join((*rel.parts, name)))
        return sorted(keys)

    def list_children(self, prefix: str) -> list[str]:
        base = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))


# --------------------------------------------------------------------------------------------
# S3
# --------------------------------------------------------------------------------------------


class S3Store:
    """A registry under ``s3://bucket/prefix``.

    Endpoint, region and credentials come from boto3's standard sources (AWS_ENDPOINT_URL,
    AWS_ENDPOINT_URL_S3, AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID, profiles, instance roles...). Retries
    follow AWS_MAX_ATTEMPTS / AWS_RETRY_MODE when set, else 3 attempts in standard mode, so an
    unreachable endpoint fails in seconds rather than minutes.
    """

    def __init__(
        self,
        *,
        bucket: str,
        prefix: str = "",
        connect_timeout: float = 3.0,
        read_timeout: float = 20.0,
        max_attempts: int | None = None,
    ) -> None:
        if not bucket:
            raise RankerError("S3 registry URI needs a bucket: s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_attempts = max_attempts
        self._client: Any = None
        self._client_lock = threading.Lock()

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def local_path(self, key: str) -> Path | None:
        return None

    def _key(self, key: str) -> str:
        key = _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _rel(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1 :] if self.prefix else full_key

    @property
    def client(self) -> Any:
        # Created on first use (not at import, not in __init__): building a client costs ~50 ms and
        # reads the environment, which tests set after constructing settings.
        with self._client_lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                max_attempts = self.max_attempts
                if max_attempts is None:
                    max_attempts = int(os.environ.get("AWS_MAX_ATTEMPTS") or 3)
                config = Config(
                    connect_timeout=self.connect_timeout,
                    read_timeout=self.read_timeout,
                    retries={"max_attempts": max_attempts, "mode": os.environ.get("AWS_RETRY_MODE") or "standard"},
                    # Integrity is checked end to end with the card's sha256; asking only for the checksums
                    # S3 requires keeps S3-compatible stores (MinIO, Ceph, older moto) working.
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                )
                self._client = boto3.session.Session().client("s3", config=config)
            return self._client

    def _endpoint(self) -> str:
        try:
            return self.client.meta.endpoint_url
        except Exception:  # noqa: BLE001 - only used to decorate an error message
            return "(unknown endpoint)"

    @contextlib.contextmanager
    def _errors(self, action: str, key: str = "") -> Iterator[None]:
        """Turn botocore failures into one-line RankerErrors that say what to check."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionError as BotoConnectionError,
            HTTPClientError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        where = f"{self.describe()}/{key}" if key else self.describe()
        try:
            yield
        except PreconditionFailed:
            raise
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (412, 409):
                raise PreconditionFailed(f"{key}: {code or status}") from None
            if code == "NoSuchBucket":
                raise RankerError(
                    f"S3 bucket {self.bucket!r} does not exist at {self._endpoint()}; create it or fix "
                    "RANKER_REGISTRY_URI"
                ) from None
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
                raise RankerError(
                    f"S3 refused to {action} {where} ({code}); check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                    "or the bucket policy"
                ) from None
            raise RankerError(
                f"S3 failed to {action} {where}: {code or status} {error.get('Message', '')}".strip()
            ) from None
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise RankerError(
                f"no AWS credentials to {action} {where}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY ({exc})"
            ) from None
        except (BotoConnectionError, HTTPClientError) as exc:  # refused, DNS, timeouts, dropped connections
            raise RankerError(
                f"S3 endpoint {self._endpoint()} is unreachable or not answering (connect timeout "
                f"{self.connect_timeout:g}s, read timeout {self.read_timeout:g}s) while trying to {action} {where}: "
                f"{exc}; check AWS_ENDPOINT_URL / network"
            ) from None
        except BotoCoreError as exc:
            raise RankerError(f"S3 failed to {action} {where}: {exc}") from None

    def get(self, key: str) -> StoredObject | None:
        from botocore.exceptions import ClientError

        with self._errors("read", key):
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise
            data = response["Body"].read()
            return StoredObject(data=data, etag=response["ETag"])

    def put(self, key: str, data: bytes, *, if_absent: bool = False, if_etag: str | None = None) -> str:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key), "Body": data}
        if if_absent:
            kwargs["IfNoneMatch"] = "*"
        elif if_etag is not None:
            kwargs["IfMatch"] = if_etag
        from botocore.exceptions import ClientError

        with self._errors("write", key):
            try:
                return self.client.put_object(**kwargs)["ETag"]
            except ClientError as exc:
                # If-Match on a key that vanished answers 404, which for a compare-and-swap means "lost".
                if if_etag is not None and exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    raise PreconditionFailed(f"{key} no longer exists") from None
                raise

    def delete(self, key: str) -> None:
        with self._errors("delete", key):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def list_keys(self, prefix: str) -> list[str]:
        full = self._key(prefix.rstrip("/")) + "/" if prefix.strip("/") else (f"{self.prefix}/" if self.prefix else "")
        keys: list[str] = []
        with self._errors("list", prefix):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                keys.extend(self._rel(obj["Key"]) for obj in page.get("Contents", []))
        return sorted(keys)

    def list_children(self, prefix: str) -> list[str]:
        full = self._key(prefix.rstrip("/")) + "/" if prefix.strip("/") else (f"{self.prefix}/" if self.prefix else "")
        names: list[str] = []
        with self._errors("list", prefix):
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full, Delimiter="/"):
                for common in page.get("CommonPrefixes", []):
                    names.append(common["Prefix"][len(full) :].rstrip("/"))
        return sorted(names)


def store_from_uri(*, uri: str, default_root: Path) -> ObjectStore:
    """Build the store named by ``RANKER_REGISTRY_URI``: empty → ``default_root``; ``file:///abs``;
    ``s3://bucket/prefix``."""
    uri = (uri or "").strip()
    if not uri:
        return LocalStore(root=default_root)
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
            raise RankerError(
                f"RANKER_REGISTRY_URI={uri!r} must be an absolute file URI, e.g. file:///srv/ranker/registry"
            )
        return LocalStore(root=Path(parsed.path))
    if parsed.scheme == "s3":
        return S3Store(bucket=parsed.netloc, prefix=parsed.path)
    raise RankerError(
        f"RANKER_REGISTRY_URI={uri!r} is not supported; use empty (local folder), file:///abs/path or s3://bucket/prefix"
    )
