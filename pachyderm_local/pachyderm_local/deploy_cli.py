"""`scripts/deploy`: create or update the pipelines of specs/ on a Pachyderm cluster at one image tag.

The composition root of the deploy: flags and environment are read here once; `deploy.py` builds the
requests. Needs python-pachyderm 7.6 (`pip install -e ".[local]"`). With auth on, python-pachyderm itself
reads the token from PACH_PYTHON_AUTH_TOKEN (never a flag: flags show up in process lists).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import grpc

from .deploy import (
    ANSWER_IMAGE_NAME,
    DEFAULT_SPEC_FILES,
    LOAD_IMAGE_NAME,
    ClusterState,
    DeployError,
    ImageRepositories,
    Request,
    build_requests,
    describe,
    validate_sha,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="scripts/deploy",
        description="Create or update the QA pipelines on a Pachyderm cluster at one image tag (a git SHA).",
    )
    parser.add_argument(
        "--tag", default=env.get("IMAGE_TAG"), help="full git SHA the images were tagged with (env IMAGE_TAG)"
    )
    parser.add_argument(
        "--namespace",
        default=env.get("DOCKERHUB_NAMESPACE"),
        help=f"Docker Hub user or org: <ns>/{ANSWER_IMAGE_NAME} and <ns>/{LOAD_IMAGE_NAME}",
    )
    parser.add_argument(
        "--answer-image",
        default=env.get("QA_ANSWER_IMAGE"),
        help="image 1 repository, no tag (env QA_ANSWER_IMAGE)",
    )
    parser.add_argument(
        "--load-image",
        default=env.get("PG_LOAD_IMAGE"),
        help="image 2 repository, no tag (env PG_LOAD_IMAGE)",
    )
    parser.add_argument(
        "--spec",
        action="append",
        type=Path,
        help="a pipeline spec file, repeatable (default: the three in specs/; e.g. swap in a GPU variant)",
    )
    parser.add_argument(
        "--project", default=env.get("PACH_PROJECT"), help="Pachyderm project (env PACH_PROJECT)"
    )
    parser.add_argument(
        "--pachd-address",
        default=env.get("PACHD_ADDRESS"),
        help="e.g. grpc://localhost:30650 or grpcs://pachd.example.com:443 (env PACHD_ADDRESS; "
        "default: pachctl's active context)",
    )
    parser.add_argument("--reprocess", action="store_true", help="re-run every datum of updated pipelines")
    parser.add_argument("--dry-run", action="store_true", help="print the requests as JSON, do not connect")
    args = parser.parse_args(argv)
    if not args.tag:
        parser.error("--tag (or IMAGE_TAG) is required: the git SHA the images were pushed with")
    if not (args.answer_image and args.load_image) and not args.namespace:
        parser.error("give --namespace (or DOCKERHUB_NAMESPACE), or both --answer-image and --load-image")
    return args


def image_repositories(args: argparse.Namespace) -> ImageRepositories:
    from_ns = ImageRepositories.from_namespace(args.namespace) if args.namespace else None
    return ImageRepositories(
        answer=args.answer_image or from_ns.answer,  # type: ignore[union-attr]
        load=args.load_image or from_ns.load,  # type: ignore[union-attr]
    )


def load_specs(paths: list[Path]) -> list[tuple[str, dict]]:
    specs = []
    for path in paths:
        try:
            specs.append((str(path), json.loads(path.read_text(encoding="utf-8"))))
        except FileNotFoundError:
            raise DeployError(f"{path}: spec file not found") from None
        except json.JSONDecodeError as exc:
            raise DeployError(f"{path}: not valid JSON: {exc}") from None
    return specs


def connect(address: str | None):
    import python_pachyderm

    if address:
        return python_pachyderm.Client.new_from_pachd_address(address)
    return python_pachyderm.Client()


def read_state(client) -> ClusterState:
    """Projects, repos and pipelines that already exist, so each pipeline is created or updated as fits."""
    return ClusterState(
        projects=frozenset(p.project.name for p in client.list_project()),
        repos=frozenset((r.repo.project.name, r.repo.name) for r in client.list_repo()),
        pipelines=frozenset((p.pipeline.project.name, p.pipeline.name) for p in client.list_pipeline()),
    )


def apply(client, requests: list[Request]) -> None:
    for request in requests:
        print(f"deploy: {describe(request)}", file=sys.stderr)
        getattr(client, request.method)(**request.kwargs)


def main(argv: list[str] | None = None, root: Path | None = None) -> int:
    """``root``: where the default specs/ are (the checkout `scripts/deploy` belongs to; default: here)."""
    args = parse_args(argv)
    root = root or Path.cwd()
    try:
        repos = image_repositories(args)
        sha = validate_sha(args.tag)
        spec_paths = args.spec or [root / p for p in DEFAULT_SPEC_FILES]
        specs = load_specs(spec_paths)
        if args.dry_run:
            requests = build_requests(
                specs, repos=repos, sha=sha, project=args.project, reprocess=args.reprocess
            )
            json.dump([r.to_json() for r in requests], sys.stdout, indent=2)
            print()
            return 0
        client = connect(args.pachd_address)
        state = read_state(client)
        requests = build_requests(
            specs, repos=repos, sha=sha, project=args.project, state=state, reprocess=args.reprocess
        )
        apply(client, requests)
    except DeployError as exc:
        print(f"deploy: error: {exc}", file=sys.stderr)
        return 2
    except (grpc.RpcError, ConnectionError) as exc:  # the server's reason is enough; drop the traceback
        where = args.pachd_address or "(pachctl's active context)"
        print(f"deploy: error talking to pachd at {where}: {exc}", file=sys.stderr)
        return 1
    print(
        f"deploy: {len(requests)} requests applied at tag {sha}; watch with `pachctl list pipeline` and "
        "`pachctl list job`",
        file=sys.stderr,
    )
    return 0
