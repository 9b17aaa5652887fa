#!/usr/bin/env bash
# Build both images from the repository's Dockerfiles as pachyderm-qa-answer:local and pachyderm-qa-load:local
# (what `make images` runs), then print each image's size and the size of the layers a code edit changes.
#
# Engine: docker when its daemon answers, else podman (Debian's podman, runc and mmdebstrap are installed when
# missing; that needs root). podman runs with project-local settings, state under .containers/ (ignored by git
# and by builds): containers.conf (runtime runc with cgroupfs, ulimits root can set, file event log) and
# storage.conf (overlay), passed through CONTAINERS_CONF / CONTAINERS_STORAGE_CONF; /etc is never touched.
# .containers/engine.env records the engine and those two paths for the tools that run the images.
#
# Base image: PYTHON_IMAGE (the Dockerfiles' python:3.12-slim-bookworm) when present or pullable; otherwise a
# stand-in from Debian bookworm packages (mmdebstrap) plus docker/local-base.Dockerfile. Bookworm's Python is
# 3.11, where CI builds on 3.12. On that stand-in, torch==2.13.0 and its dependencies come from pip's own
# configured sources on this machine, served to the build as a read-only file:// index.
#
# Environment: ENGINE (docker|podman), PYTHON_IMAGE, TORCH_INDEX_URL (passed to image 1's build),
# QA_MODEL_DIR (a saved model folder to bake instead of the hub model) with QA_MODEL_ID (the id it is baked
# and loaded as; default local/<folder name>), PY (the Python whose pip fills the torch index).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STATE=$ROOT/.containers
PY=${PY:-python3}
ANSWER_IMAGE=pachyderm-qa-answer:local
LOAD_IMAGE=pachyderm-qa-load:local
PYTHON_IMAGE=${PYTHON_IMAGE:-python:3.12-slim-bookworm}
LOCAL_ROOTFS=localhost/pachyderm-debian-rootfs:bookworm
LOCAL_BASE=localhost/pachyderm-python-base:3.11-bookworm
QA_MODEL_DIR=${QA_MODEL_DIR:-}
QA_MODEL_ID=${QA_MODEL_ID:-}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-}
ENGINE=${ENGINE:-}

log() { printf 'images: %s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

apt_install() {
  [ "$(id -u)" = 0 ] || die "$* missing; install the Debian packages $* (needs root)"
  log "installing Debian packages: $*"
  DEBIAN_FRONTEND=noninteractive apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

configure_podman() {
  mkdir -p "$STATE/storage" "$STATE/run" "$STATE/tmp"
  cat >"$STATE/containers.conf" <<EOF
# Written by docker/build-images.sh. crun fails every start here ("cgroups in hybrid mode not supported"):
# runc with cgroupfs works; root cannot raise hard rlimits, so podman's default ulimits are replaced.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$STATE/events.log"
tmp_dir = "$STATE/tmp"
EOF
  cat >"$STATE/storage.conf" <<EOF
# Written by docker/build-images.sh: images and containers of this checkout live under $STATE.
[storage]
driver = "overlay"
graphroot = "$STATE/storage"
runroot = "$STATE/run"
EOF
  export CONTAINERS_CONF=$STATE/containers.conf CONTAINERS_STORAGE_CONF=$STATE/storage.conf
}

choose_engine() {
  if [ -z "$ENGINE" ]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then ENGINE=docker; else ENGINE=podman; fi
  fi
  mkdir -p "$STATE"
  case $ENGINE in
    docker)
      PULL_NEVER=(--pull=false)
      printf 'ENGINE=docker\n' >"$STATE/engine.env"
      ;;
    podman)
      if ! command -v podman >/dev/null || ! command -v runc >/dev/null; then apt_install podman runc; fi
      configure_podman
      PULL_NEVER=(--pull=never)
      printf 'ENGINE=podman\nCONTAINERS_CONF=%s\nCONTAINERS_STORAGE_CONF=%s\n' \
        "$CONTAINERS_CONF" "$CONTAINERS_STORAGE_CONF" >"$STATE/engine.env"
      ;;
    *) die "ENGINE must be docker or podman, got '$ENGINE'" ;;
  esac
  log "engine: $ENGINE ($($ENGINE --version))"
}

# Sets BASE: PYTHON_IMAGE when it can be had, else the Debian stand-in (built once, then reused).
choose_base() {
  if $ENGINE image inspect "$PYTHON_IMAGE" >/dev/null 2>&1 \
    || timeout 300 "$ENGINE" pull -q "$PYTHON_IMAGE" >/dev/null 2>&1; then
    BASE=$PYTHON_IMAGE
    return
  fi
  BASE=$LOCAL_BASE
  log "cannot pull $PYTHON_IMAGE: base is $LOCAL_BASE, Debian bookworm's Python 3.11 (CI builds on $PYTHON_IMAGE)"
  if $ENGINE image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
    return
  fi
  command -v mmdebstrap >/dev/null || apt_install mmdebstrap
  log "building $LOCAL_ROOTFS with mmdebstrap"
  mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates,passwd bookworm - \
    | $ENGINE import - "$LOCAL_ROOTFS" >/dev/null
  local context=$STATE/base-context
  rm -rf "$context" && mkdir -p "$context"
  cp /etc/ssl/certs/ca-certificates.crt "$context/"
  $ENGINE build "${PULL_NEVER[@]}" --network=none --build-arg "ROOTFS=$LOCAL_ROOTFS" \
    -f docker/local-base.Dockerfile -t "$LOCAL_BASE" "$context"
}

# torch and its dependencies for the base's Python, from pip's configured sources, as a PEP 503 index folder.
fill_torch_index() {
  local index=$STATE/torch-index version
  version=$($ENGINE run --rm --network=none "$BASE" python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  rm -rf "$index/simple" && mkdir -p "$index/files" "$index/simple"
  log "torch==2.13.0 for Python $version into $index"
  "$PY" -m pip download -q --only-binary=:all: --python-version "$version" -d "$index/files" torch==2.13.0
  local wheel project
  for wheel in "$index"/files/*.whl; do
    wheel=${wheel##*/}
    project=$(printf '%s' "${wheel%%-*}" | tr 'A-Z_.' 'a-z--')
    mkdir -p "$index/simple/$project"
    printf '<a href="../../files/%s">%s</a>\n' "$wheel" "$wheel" >>"$index/simple/$project/index.html"
  done
}

human() { numfmt --to=si --suffix=B --format='%.1f' "$1"; }

# A history size in bytes: docker prints bytes (--human=false), podman 4.3 always prints "706 kB" or "1.17 GB".
size_bytes() {
  local v=${1% B}
  v=${v/ kB/K}
  v=${v/ MB/M}
  v=${v/ GB/G}
  numfmt --from=si "$v"
}

# Image size, and the layers from the code's COPY up: what a code edit changes and a node pulls again.
report() {
  local tag=$1 seconds=$2 size history code_layers=0 code_bytes=0 size_text bytes created found=0
  size=$($ENGINE image inspect --format '{{.Size}}' "$tag")
  history=$($ENGINE history --human=false --no-trunc --format '{{.Size}}|{{.CreatedBy}}' "$tag")
  while IFS='|' read -r size_text created; do
    [ "$found" = 1 ] && break
    bytes=$(size_bytes "$size_text")
    [ "$bytes" = 0 ] || code_layers=$((code_layers + 1))
    code_bytes=$((code_bytes + bytes))
    case $created in *COPY*/opt/app*) found=1 ;; esac
  done <<<"$history"
  [ "$found" = 1 ] || die "$tag has no COPY of /opt/app"
  log "$tag: built in ${seconds} s; image $(human "$size"); a code edit changes ${code_layers} layer(s)" \
    "of $(human "$code_bytes") in all (the code's COPY of /opt/app and what follows it)"
}

build() {
  local tag=$1 dockerfile=$2 start=$SECONDS
  shift 2
  log "building $tag from $dockerfile"
  $ENGINE build "${PULL_NEVER[@]}" --network=host --build-arg "PYTHON_IMAGE=$BASE" "$@" -f "$dockerfile" -t "$tag" .
  BUILT+=("$tag|$((SECONDS - start))")
}

choose_engine
choose_base

answer_args=()
if [ -n "$TORCH_INDEX_URL" ]; then
  answer_args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
elif [ "$BASE" = "$LOCAL_BASE" ]; then
  [ "$ENGINE" = podman ] || die "set TORCH_INDEX_URL: only podman mounts the local torch index into a build"
  fill_torch_index
  answer_args+=(--volume "$STATE/torch-index:/torch-index:ro" --build-arg TORCH_INDEX_URL=file:///torch-index/simple)
fi
if [ -n "$QA_MODEL_DIR" ]; then
  [ -f "$QA_MODEL_DIR/config.json" ] || die "QA_MODEL_DIR=$QA_MODEL_DIR holds no config.json (make tiny-model?)"
  model_dir=$(realpath "$QA_MODEL_DIR")
  QA_MODEL_ID=${QA_MODEL_ID:-local/${model_dir##*/}}
  log "baking the model folder $model_dir as $QA_MODEL_ID"
  answer_args+=(--build-context "qa_model=$model_dir" --build-arg "QA_MODEL_ID=$QA_MODEL_ID")
fi

BUILT=()
build "$ANSWER_IMAGE" pachyderm_01/Dockerfile "${answer_args[@]}"
build "$LOAD_IMAGE" pachyderm_02/Dockerfile
for built in "${BUILT[@]}"; do
  report "${built%|*}" "${built#*|}"
done
