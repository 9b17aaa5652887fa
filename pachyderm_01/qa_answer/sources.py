"""Where question CSVs come from: a GCS bucket prefix (real client) or a local folder. Read-only.

Both implement ``QuestionSource``: list the ``*.csv`` objects (names relative to the prefix or folder)
and fetch one into a given local path, verified. The GCS source never deletes, rewrites or patches
anything in the bucket; it only lists and downloads.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from qa_answer.contract import (
    LINK_OUTSIDE,
    MAX_PATH_BYTES,
    PATH_TOO_LONG,
    FoundFile,
    clipped_name,
    is_csv_name,
    links_outside,
    walk_csv,
)
from qa_answer.errors import SourceError

_DOWNLOAD_ATTEMPTS = 3
#: stat errors that make a listed name "not a file" (as ``Path.is_file`` treats them): a link to nothing,
#: a name that vanished
_NOT_A_FILE_ERRNOS = (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP)


@dataclass(frozen=True)
class SourceObject:
    #: relative to the source's prefix or folder; untrusted for GCS. For a refused path too long to show
    #: whole, its :func:`~qa_answer.contract.clipped_name`
    name: str
    size: int | None = None
    handle: Any = field(default=None, compare=False, repr=False)
    #: why the object is listed but must not be copied (e.g. a symlink leading out of the folder)
    refused: str | None = None


class QuestionSource(Protocol):
    url: str

    def list_csv(self) -> Iterator[SourceObject]: ...

    def fetch(self, obj: SourceObject, dest: Path) -> SourceObject | None:
        """Write the object's bytes to ``dest``; returns what was fetched, or None if it vanished."""
        ...


class LocalFolderSource:
    """Every ``*.csv`` file under a folder (folder symlinks are not followed, file links only inside it)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)

    def list_csv(self) -> Iterator[SourceObject]:
        real_root = os.path.realpath(os.fsencode(self.root))
        found = [obj for file in walk_csv(real_root) if (obj := self._listed(real_root, file)) is not None]
        yield from sorted(found, key=lambda obj: obj.name)

    def _listed(self, real_root: bytes, file: FoundFile) -> SourceObject | None:
        """What the listing says of ``file``: None where it is not a regular file (a link to nothing)."""
        name = os.fsdecode(file.rel)
        if len(os.fsencode(self.root / name)) >= MAX_PATH_BYTES:
            # fetch copies by path name, which cannot reach past PATH_MAX; a name this long is logged clipped
            return SourceObject(clipped_name(file.rel), refused=PATH_TOO_LONG)
        try:
            st, linked = file.stat_and_link()
        except OSError as exc:
            if exc.errno in _NOT_A_FILE_ERRNOS:
                return None
            raise
        if not stat.S_ISREG(st.st_mode):
            return None
        if linked and links_outside(real_root, file.path):
            return SourceObject(name, refused=LINK_OUTSIDE.format(folder="SOURCE"))
        return SourceObject(name, st.st_size)

    def fetch(self, obj: SourceObject, dest: Path) -> SourceObject | None:
        try:
            shutil.copyfile(self.root / obj.name, dest)
        except FileNotFoundError:
            return None
        return obj


class GCSSource:
    """``*.csv`` objects under ``gs://bucket/prefix``, downloaded with crc32c (or md5) verification."""

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.url = f"gs://{bucket}/{prefix}"

    def list_csv(self) -> Iterator[SourceObject]:
        from google.api_core import exceptions
        from google.auth.exceptions import GoogleAuthError

        try:
            for blob in self.client.list_blobs(self.bucket, prefix=self.prefix or None):
                relative = blob.name[len(self.prefix) :]
                if is_csv_name(relative):
                    yield SourceObject(relative, blob.size, blob)
        except exceptions.NotFound:
            raise SourceError(f"bucket {self.bucket!r} not found (listing {self.url})") from None
        except exceptions.Forbidden as exc:
            raise SourceError(f"permission denied listing {self.url}: {exc.message}") from None
        except exceptions.GoogleAPIError as exc:
            raise SourceError(f"cannot list {self.url}: {exc}") from None
        except GoogleAuthError as exc:
            raise SourceError(
                f"cannot authenticate to GCS to list {self.url}: {type(exc).__name__}: {exc}"
            ) from None

    def fetch(self, obj: SourceObject, dest: Path) -> SourceObject | None:
        from google.api_core import exceptions
        from google.resumable_media import DataCorruption

        blob = obj.handle
        # What the listing promised; a download rewrites the blob's metadata from response headers.
        generation, crc32c, md5 = blob.generation, blob.crc32c, blob.md5_hash
        corrupted = 0
        for _ in range(2 * _DOWNLOAD_ATTEMPTS):
            try:
                # Pinned to the generation whose checksum we hold (GCS answers 412 if it was replaced); the
                # client checks the bytes against that generation's checksum as they arrive.
                checksum = download_checksum(crc32c, md5)
                blob.download_to_filename(str(dest), checksum=checksum, if_generation_match=generation)
                return SourceObject(obj.name, blob.size, blob)
            except exceptions.PreconditionFailed:
                problem = None
            except exceptions.NotFound:
                return None  # deleted since listed
            except ChecksumMismatch as exc:
                problem = str(exc)
            except DataCorruption as exc:
                problem = corruption_reason(str(exc))
            except exceptions.GoogleAPIError as exc:
                raise SourceError(f"cannot download gs://{self.bucket}/{obj.handle.name!r}: {exc}") from None
            fresh = self.client.bucket(self.bucket).get_blob(obj.handle.name)
            if fresh is None:
                return None
            if fresh.generation != generation:  # replaced since listed: fetch the new version
                blob, generation, crc32c, md5 = fresh, fresh.generation, fresh.crc32c, fresh.md5_hash
                continue
            corrupted += 1
            if corrupted == _DOWNLOAD_ATTEMPTS:
                raise SourceError(
                    f"checksum mismatch downloading gs://{self.bucket}/{obj.handle.name!r} "
                    f"({_DOWNLOAD_ATTEMPTS} attempts): {problem}"
                )
        raise SourceError(f"gs://{self.bucket}/{obj.handle.name!r} kept changing while being downloaded")


class ChecksumMismatch(Exception):
    pass


def download_checksum(crc32c: str | None, md5: str | None) -> str:
    """Which checksum the client verifies a download with: crc32c, md5 when the object has none."""
    if crc32c:
        return "crc32c"
    if md5:
        return "md5"
    raise ChecksumMismatch("the object has neither a crc32c nor an md5 checksum")


_CORRUPTION = re.compile(
    r"indicated an (\w+) checksum of:\s+(\S+)\s+but the actual \w+ checksum of the downloaded contents was:"
    r"\s+(\S+)"
)


def corruption_reason(message: str) -> str:
    """One line from the client's multi-line checksum error: which checksum, what arrived, what was due."""
    found = _CORRUPTION.search(message)
    if found is None:
        return "the downloaded bytes do not match the object's checksum"
    kind, expected, actual = found.groups()
    return f"{kind.lower()} of the downloaded bytes is {actual}, the object's is {expected}"


def gcs_client(emulator_host: str | None, project: str | None, credentials_file: Path | None = None) -> Any:
    """The real client: anonymous against an emulator, else Application Default Credentials."""
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud import storage

    if emulator_host:
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(
            credentials=AnonymousCredentials(),
            project=project,
            client_options={"api_endpoint": emulator_host},
        )
    try:
        return storage.Client(project=project)
    except DefaultCredentialsError as exc:
        if credentials_file is None:
            raise SourceError(
                "no Google credentials found: set GOOGLE_APPLICATION_CREDENTIALS to a service-account key "
                "file (or STORAGE_EMULATOR_HOST for an emulator)"
            ) from None
        # Only google-auth's own first sentence: never anything that could quote the key file.
        first = exc.args[0] if exc.args and isinstance(exc.args[0], str) else type(exc).__name__
        raise SourceError(
            f"cannot use GOOGLE_APPLICATION_CREDENTIALS={credentials_file}: {first.splitlines()[0][:300]}"
        ) from None
