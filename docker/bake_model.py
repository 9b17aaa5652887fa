"""Bake the QA model into an image's Hugging Face cache at a pinned revision (run at `docker build`).

Pods run with HF_HUB_OFFLINE=1 and ask for the hub id without a revision, which the cache resolves
through `refs/main`. Pointing that ref at the pinned commit makes the plain hub id load exactly the baked
snapshot, and the answers' `model` column records that commit. With `--from-folder DIR` holding a saved
model, DIR is laid into the same layout without the hub, at a revision that is the digest of its files
(the same folder always gets the same revision). The cache is left world-readable, for the image's user.
Standard library + huggingface_hub only.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import sys
from pathlib import Path

_COMMIT = re.compile(r"[0-9a-f]{40}")
#: Everything transformers needs to build the tokenizer and the model, in the smallest weights format present.
_CONFIG_PATTERNS = ["*.json", "*.txt"]
_WEIGHTS_PREFERENCE = ["model.safetensors", "pytorch_model.bin"]


def pin_main_ref(snapshot: Path) -> Path:
    """Make `refs/main` of the snapshot's cache folder name the snapshot's commit; returns the ref file."""
    commit = snapshot.name
    if not _COMMIT.fullmatch(commit) or snapshot.parent.name != "snapshots":
        raise ValueError(
            f"{snapshot} is not a Hugging Face cache snapshot folder (…/snapshots/<40-hex commit>)"
        )
    ref = snapshot.parent.parent / "refs" / "main"
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(commit)
    return ref


def folder_revision(folder: Path) -> str:
    """A 40-hex revision for a model folder: sha1 over each file's relative path and sha256."""
    digest = hashlib.sha1()
    for path, relative in _model_files(folder):
        digest.update(f"{relative}\0{_sha256(path)}\n".encode())
    return digest.hexdigest()


def bake_folder(model_id: str, folder: Path, cache_dir: Path) -> Path:
    """Lay `folder` into `cache_dir` as `model_id`: blobs by sha256, snapshot links, refs/main."""
    from huggingface_hub.file_download import repo_folder_name

    files = _model_files(folder)
    if not any(relative == "config.json" for _, relative in files):
        raise ValueError(f"{folder} holds no config.json: not a saved model folder")
    repo = cache_dir / repo_folder_name(repo_id=model_id, repo_type="model")
    snapshot = repo / "snapshots" / folder_revision(folder)
    for path, relative in files:
        blob = repo / "blobs" / _sha256(path)
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, blob)
        link = snapshot / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    pin_main_ref(snapshot)
    return snapshot


def make_world_readable(root: Path) -> None:
    """Folders 0755, files 0644 under `root`: the image runs as a user that owns none of them."""
    for folder, _, names in os.walk(root):
        os.chmod(folder, 0o755)
        for name in names:
            path = Path(folder, name)
            if not path.is_symlink():
                path.chmod(0o644)


def _model_files(folder: Path) -> list[tuple[Path, str]]:
    return sorted(
        ((p, p.relative_to(folder).as_posix()) for p in folder.rglob("*") if p.is_file()),
        key=lambda item: item[1],
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def bake(model_id: str, revision: str) -> Path:
    """Download config, tokenizer and one weights file of `model_id`@`revision` to HF_HOME; pin refs/main."""
    from huggingface_hub import list_repo_files, snapshot_download

    if not _COMMIT.fullmatch(revision):
        raise ValueError(f"revision must be a full 40-character commit sha, got {revision!r}")
    files = set(list_repo_files(model_id, revision=revision))
    weights = next((w for w in _WEIGHTS_PREFERENCE if w in files), None)
    if weights is None:
        raise ValueError(f"{model_id}@{revision} has none of {_WEIGHTS_PREFERENCE}")
    snapshot = Path(
        snapshot_download(model_id, revision=revision, allow_patterns=[*_CONFIG_PATTERNS, weights])
    )
    pin_main_ref(snapshot)
    return snapshot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_id")
    parser.add_argument("revision", help="full commit sha (for the hub; a folder's revision is its digest)")
    parser.add_argument(
        "--from-folder",
        type=Path,
        help="a saved model folder to bake instead of downloading; an empty or missing folder means the hub",
    )
    args = parser.parse_args(argv)
    from huggingface_hub import constants

    if args.from_folder is not None and args.from_folder.is_dir() and any(args.from_folder.iterdir()):
        snapshot = bake_folder(args.model_id, args.from_folder, Path(constants.HF_HUB_CACHE))
        source = f"local folder {args.from_folder}"
    else:
        snapshot = bake(args.model_id, args.revision)
        source = "the hub"
    make_world_readable(Path(constants.HF_HUB_CACHE))
    print(f"baked {args.model_id}@{snapshot.name} from {source} into {snapshot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
