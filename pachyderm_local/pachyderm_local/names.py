"""Pachyderm's rules for names and file paths (pure), so nothing a user types can leave the runner's folders.

Repo, pipeline and input names follow ``ancestry.ValidateName`` (``[a-zA-Z0-9_-]+``). File paths follow
``storage.ValidateFilename`` (printable ASCII, no globbing character, no ``.`` or ``..`` element) and are
then cleaned as ``pfsfile.CleanPath`` does (``a//b/`` is ``/a/b``). Store keys are the cleaned path
without its leading ``/``.
"""

from __future__ import annotations

import posixpath
import re

_NAME = re.compile(r"^[a-zA-Z0-9_-]+$")
_PRINTABLE_ASCII = re.compile(r"^[ -~]+$")
_GLOB_CHAR = re.compile(r"[*?\[\]{}!()@+^]")
#: local ids (commits, jobs, datums) are hex uuids or sha256 digests
_ID = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")


class InvalidNameError(ValueError):
    """A name or path Pachyderm would refuse; the message names it and the rule."""


def validate_name(kind: str, name: object) -> str:
    """``name`` if it is a valid repo/pipeline/input name, else InvalidNameError naming ``kind``."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidNameError(
            f"{kind} {name!r} invalid: only alphanumeric characters, underscores, and dashes are allowed"
        )
    return name


def validate_id(kind: str, value: str) -> str:
    """A commit, job or datum id typed by a user; it becomes a file name, so no path characters."""
    if not _ID.match(value):
        raise InvalidNameError(f"{kind} {value!r} invalid: expected letters, digits, '-' or '_'")
    return value


def clean_path(path: str) -> str:
    """``pfsfile.CleanPath``: ``""`` and ``.`` are ``/``, otherwise absolute without a trailing slash."""
    cleaned = posixpath.normpath(path) if path else "."
    if cleaned == ".":
        return "/"
    return "/" + cleaned.strip("/")


def validate_file_path(path: str) -> str:
    """A file path for PFS, refused as Pachyderm refuses it; returns its store key (cleaned, no ``/``)."""
    if not _PRINTABLE_ASCII.match(path):
        raise InvalidNameError(f"path ({path!r}) invalid: only printable ASCII characters allowed")
    glob_char = _GLOB_CHAR.search(path)
    if glob_char:
        raise InvalidNameError(
            f"path ({path!r}) invalid: globbing character ({glob_char.group()}) not allowed in path"
        )
    if any(part in (".", "..") for part in path.split("/")):
        raise InvalidNameError(f"path ({path!r}) invalid: relative file paths are not allowed")
    key = clean_path(path).lstrip("/")
    if not key:
        raise InvalidNameError(f"path ({path!r}) invalid: a file needs a name below '/'")
    return key


def clean_lookup_path(path: str) -> str:
    """A path to read or delete (``list-files``, ``get-file``, ``delete-file``): cleaned, kept under ``/``."""
    if any(part == ".." for part in path.split("/")):
        raise InvalidNameError(f"path ({path!r}) invalid: relative file paths are not allowed")
    return clean_path(path).lstrip("/")
