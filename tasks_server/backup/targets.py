"""Where snapshots are kept: a local directory or an S3-compatible bucket. Every
method blocks; the job calls them from a worker thread."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..config import Settings
from ..errors import BackupError, ConfigError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

from .policy import checksum_line, parse_checksum
from .snapshot import fsync_file, write_atomically


class Target(Protocol):
    """Where snapshots are kept. Every method blocks; call them from a worker thread."""

    staging: Path  # a directory where a snapshot is written before it is published

    def publish(self, snapshot: Path, name: str, checksum: str) -> str:
        """Store ``snapshot`` as ``name`` with its checksum beside it (checksum first, so a
        snapshot that is visible always has one); returns where it went."""

    def names(self) -> list[str]:
        """Every file name kept here (snapshots and checksums, possibly others)."""

    def delete(self, names: Sequence[str]) -> None:
        """Remove these snapshots and their checksums."""

    def fetch(self, name: str, directory: Path) -> tuple[Path, str | None]:
        """Bring snapshot ``name`` into ``directory``; returns the file and the recorded
        checksum (None when no checksum is kept beside it)."""


class LocalTarget:
    """A directory, created on first use. Publishing renames within it, so a snapshot
    appears whole or not at all."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.staging = directory

    def publish(self, snapshot: Path, name: str, checksum: str) -> str:
        final = self.directory / name
        write_atomically(final.with_name(f"{name}.sha256"), checksum_line(checksum, name))
        fsync_file(snapshot)
        snapshot.replace(final)
        fsync_file(self.directory)
        return str(final)

    def names(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return [entry.name for entry in self.directory.iterdir() if entry.is_file()]

    def delete(self, names: Sequence[str]) -> None:
        for name in names:
            (self.directory / name).unlink(missing_ok=True)
            (self.directory / f"{name}.sha256").unlink(missing_ok=True)

    def fetch(self, name: str, directory: Path) -> tuple[Path, str | None]:
        return local_snapshot(self.directory / name)


def local_snapshot(path: Path) -> tuple[Path, str | None]:
    if not path.is_file():
        raise BackupError(f"no snapshot at {path}")
    sums = path.with_name(f"{path.name}.sha256")
    return path, parse_checksum(sums.read_text()) if sums.is_file() else None


class S3Target:
    """A bucket and key prefix on any S3-compatible service. Uploads above the threshold
    are multipart; the key is ``<prefix>/<name>``."""

    def __init__(
        self, client: S3Client, bucket: str, prefix: str, staging: Path, part_bytes: int
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.staging = staging
        self.part_bytes = part_bytes

    def key(self, name: str) -> str:
        """A bare name lives under the prefix; anything with a ``/`` is a full key."""
        return name if "/" in name or not self.prefix else f"{self.prefix}/{name}"

    def publish(self, snapshot: Path, name: str, checksum: str) -> str:
        from boto3.s3.transfer import TransferConfig

        key = self.key(name)
        body = checksum_line(checksum, name).encode()
        self.client.put_object(
            Bucket=self.bucket, Key=f"{key}.sha256", Body=body, ContentType="text/plain"
        )
        transfer = TransferConfig(
            multipart_threshold=self.part_bytes, multipart_chunksize=self.part_bytes
        )
        extra = {"ContentType": "application/vnd.sqlite3", "Metadata": {"sha256": checksum}}
        self.client.upload_file(str(snapshot), self.bucket, key, ExtraArgs=extra, Config=transfer)
        return f"s3://{self.bucket}/{key}"

    def names(self) -> list[str]:
        start = f"{self.prefix}/" if self.prefix else ""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=start, Delimiter="/"
        )
        return [item["Key"][len(start) :] for page in pages for item in page.get("Contents", [])]

    def delete(self, names: Sequence[str]) -> None:
        keys = [key for name in names for key in (self.key(name), f"{self.key(name)}.sha256")]
        for first in range(0, len(keys), 1000):  # the API's limit per request
            objects: list[ObjectIdentifierTypeDef] = [
                {"Key": key} for key in keys[first : first + 1000]
            ]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects})

    def fetch(self, name: str, directory: Path) -> tuple[Path, str | None]:
        key = self.key(name)
        dest = directory / key.rsplit("/", 1)[-1]
        try:
            self.client.download_file(self.bucket, key, str(dest))
        except self.client.exceptions.ClientError as exc:
            raise BackupError(f"cannot fetch s3://{self.bucket}/{key}: {exc}") from exc
        try:
            sums = self.client.get_object(Bucket=self.bucket, Key=f"{key}.sha256")
        except self.client.exceptions.NoSuchKey:
            return dest, None
        return dest, parse_checksum(sums["Body"].read().decode(errors="replace"))


def s3_client(settings: Settings) -> S3Client:
    """A client for the configured endpoint. Credentials go to botocore only; botocore's
    own DEBUG output carries request headers (key id, session token), so its loggers are
    held at INFO whatever LOG_LEVEL says."""
    import boto3
    from botocore.config import Config

    for name in ("botocore", "boto3", "s3transfer", "urllib3"):
        quiet = logging.getLogger(name)
        quiet.setLevel(max(quiet.level, logging.INFO))
    config = Config(
        s3={"addressing_style": "path" if settings.s3_path_style else "virtual"},
        retries={"mode": "standard", "max_attempts": 5},
        # many S3-compatible services reject the CRC checksums boto3 sends by default
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=settings.s3_endpoint,
        aws_access_key_id=settings.s3_access_key,
        aws_secret_access_key=settings.s3_secret_key,
        aws_session_token=settings.s3_session_token,
        region_name=settings.s3_region or "us-east-1",
        config=config,
    )


def target_from(settings: Settings) -> Target:
    """The configured target. Raises ConfigError when it is not configured."""
    if settings.backup_method == "OBJECT_STORAGE":
        if not settings.s3_bucket:
            raise ConfigError("BACKUP_OBJECT_STORAGE_BUCKET_NAME", None, "is not set")
        return S3Target(
            s3_client(settings),
            settings.s3_bucket,
            settings.s3_path,
            settings.database_path.parent,
            settings.s3_multipart_threshold_bytes,
        )
    if not settings.backup_dir:
        raise ConfigError("BACKUP_PATH_DIR_SQLITE", None, "is not set (or use backup --to)")
    return LocalTarget(Path(settings.backup_dir))
