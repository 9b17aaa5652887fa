"""Bake the default QA model into an image's Hugging Face cache at a pinned revision (run at `docker build`).

Pods run with HF_HUB_OFFLINE=1 and ask for the hub id without a revision, which the cache resolves
through `refs/main`. Pointing that ref at the pinned commit makes the plain hub id load exactly the baked
snapshot, and the answers' `model` column records that commit. Standard library + huggingface_hub only.
"""

from __future__ import annotations

import argparse
import re
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
    parser.add_argument("revision", help="full commit sha")
    args = parser.parse_args(argv)
    snapshot = bake(args.model_id, args.revision)
    print(f"baked {args.model_id}@{args.revision} into {snapshot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
