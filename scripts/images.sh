#!/usr/bin/env bash
# Builds flopnet's container images on a machine that reaches Debian's and PyPI's package
# servers but no image registry, so that nothing inside a build or a container touches the
# network:
#
#   base     two base images made from Debian's packages with debootstrap + `docker import`:
#              flopnet/base:bookworm          python3 (3.11), venv, libgmp, tini  (the node)
#              flopnet/sandbox-base:bookworm  python3, nodejs, g++, rustc          (the sandbox)
#   wheels   a wheelhouse made on this host with `pip wheel` (.images/wheels/deps: torch 2.13.0
#            CPU and every dependency; .images/wheels/flopnet: flopnet's own wheel, rebuilt
#            each time), installed in the image with `pip install --no-index`
#   images   `docker build --network none` of docker/node.Dockerfile (flopnet/node:cpu) and
#            docker/sandbox.Dockerfile (flopnet-sandbox:1)
#   all      the three, in order (the default)
#
# It installs what it needs (docker.io, debootstrap, docker-compose from Debian) and starts
# dockerd when none answers: with no bridge, no iptables rules and no IP forwarding, so a
# container can have host networking (loopback only here) or none, nothing else.
# Step timings and image sizes are appended to .images/times.tsv.
#
# The GPU image (a CUDA base with the `gpu` extra, vLLM) is documented in docs/deploy.md; it
# cannot be built here (no registry for a CUDA base image, no GPU, and the CUDA wheels are
# gigabytes): `GPU_EXTRA=gpu scripts/images.sh wheels` only prepares its wheelhouse.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WORK=${IMAGES_DIR:-$ROOT/.images}
SUITE=bookworm
PYTHON=${PYTHON:-python3}
GPU_EXTRA=${GPU_EXTRA:-}
BASE_TAG=flopnet/base:bookworm
SANDBOX_BASE_TAG=flopnet/sandbox-base:bookworm
NODE_TAG=${NODE_TAG:-flopnet/node:cpu}
SANDBOX_TAG=${SANDBOX_TAG:-flopnet-sandbox:1}
BASE_PACKAGES=python3,python3-venv,libgmp10,tini,ca-certificates
SANDBOX_PACKAGES=python3,nodejs,g++,rustc
mkdir -p "$WORK"
TIMES=$WORK/times.tsv

log() { echo "images: $*" >&2; }
die() { echo "images: error: $*" >&2; exit 1; }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

record() { # step seconds [bytes]
  printf '%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$1" "$2" "${3:-}" >>"$TIMES"
}

ensure_tools() {
  local need=()
  command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
  command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
  command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
  if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

ensure_dockerd() {
  if docker info >/dev/null 2>&1; then
    return
  fi
  log "starting dockerd (no bridge, no iptables, no forwarding; log: $WORK/dockerd.log)"
  # setsid: the daemon outlives this script (and the test that started it) as a service would.
  # At priority 0 even when this script runs under `nice` (a build at low priority): containers
  # inherit the daemon's niceness, and starved nodes of a devnet miss their deadlines.
  $SUDO nice -n "$((-$(nice)))" setsid nohup dockerd --bridge=none --iptables=false \
    --ip-forward=false --ip-masq=false >"$WORK/dockerd.log" 2>&1 </dev/null &
  for _ in $(seq 1 120); do
    docker info >/dev/null 2>&1 && return
    sleep 0.5
  done
  tail -20 "$WORK/dockerd.log" >&2 || true
  die "dockerd did not start within 60 s"
}

debian_mirror() {
  # The mirror this host's apt uses (it is the one that answers), else Debian's default.
  local uri
  uri=$(grep -hoE '^(URIs:|deb) +https?://[^ ]+' /etc/apt/sources.list.d/*.sources \
    /etc/apt/sources.list 2>/dev/null | grep -v security | head -1 | awk '{print $2}') || true
  echo "${MIRROR:-${uri:-http://deb.debian.org/debian}}"
}

make_base() { # tag packages
  local tag=$1 packages=$2 key rootfs started
  key=$(echo "$SUITE $packages v1" | sha256sum | cut -c1-16)
  if [ "$(docker image inspect -f '{{index .Config.Labels "org.flopnet.base"}}' "$tag" 2>/dev/null)" = "$key" ]; then
    log "$tag is up to date"
    return
  fi
  rootfs=$WORK/rootfs-$key
  $SUDO rm -rf "$rootfs"
  mkdir -p "$WORK/debs"
  log "debootstrap $SUITE ($packages) into $rootfs"
  started=$(date +%s)
  $SUDO debootstrap --variant=minbase --include="$packages" --cache-dir="$WORK/debs" \
    "$SUITE" "$rootfs" "$(debian_mirror)" >"$WORK/debootstrap-$key.log" 2>&1 ||
    { tail -20 "$WORK/debootstrap-$key.log" >&2; die "debootstrap failed"; }
  # Nothing of apt's lists or downloaded packages in the image.
  $SUDO rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/*
  $SUDO tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change "LABEL org.flopnet.base=$key" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' - "$tag" >/dev/null
  $SUDO rm -rf "$rootfs"
  record "base:$tag" $(($(date +%s) - started)) "$(docker image inspect -f '{{.Size}}' "$tag")"
  log "$tag made in $(($(date +%s) - started)) s"
}

quiet_pip() { # pip's noise about this host's file:// indexes that lack a package
  grep -v "^WARNING: Location 'file:" || true
}

make_wheels() {
  local version deps=$WORK/wheels/deps own=$WORK/wheels/flopnet stamp want started
  version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  # The wheels must fit the base image's Python (Debian bookworm: 3.11).
  [ "$version" = "3.11" ] || die "$PYTHON is Python $version; the images run 3.11 (set PYTHON=)"
  stamp=$deps/.stamp
  # Keyed on the declared dependencies (not the whole pyproject.toml: dev tools do not count).
  want=$("$PYTHON" -c 'import json, sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extra = sys.argv[1]
print(json.dumps([project["dependencies"], project["optional-dependencies"].get(extra), extra]))
' "$GPU_EXTRA" | sha256sum | cut -c1-16)
  started=$(date +%s)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    log "building the dependency wheelhouse in $deps"
    rm -rf "$deps" "$WORK/wheels/tmp"
    mkdir -p "$deps"
    local torch=("torch==2.13.0") # the cached CPU build; the gpu extra brings its own torch
    [ -z "$GPU_EXTRA" ] || torch=()
    "$PYTHON" -m pip wheel -q --wheel-dir "$WORK/wheels/tmp" "${torch[@]}" \
      ".${GPU_EXTRA:+[$GPU_EXTRA]}" 2> >(quiet_pip >&2)
    # flopnet's own wheel goes apart (it changes with every commit, the rest rarely).
    find "$WORK/wheels/tmp" -name 'flopnet-*.whl' -delete
    mv "$WORK/wheels/tmp"/*.whl "$deps"/
    rm -rf "$WORK/wheels/tmp"
    echo "$want" >"$stamp"
  fi
  rm -rf "$own"
  mkdir -p "$own"
  "$PYTHON" -m pip wheel -q --no-deps --wheel-dir "$own" . 2> >(quiet_pip >&2)
  rm -rf build/lib build/bdist.* # setuptools' leftovers (build/ also holds the editable links)
  record wheels $(($(date +%s) - started)) "$(du -sb "$WORK/wheels" | cut -f1)"
}

build_image() { # tag dockerfile context base
  local tag=$1 dockerfile=$2 context=$3 base=$4 started
  started=$(date +%s)
  log "docker build --network none -t $tag -f $dockerfile $context (base $base)"
  # The classic builder: Debian's docker.io has no buildx, and --network none is honoured.
  DOCKER_BUILDKIT=0 docker build -q --network none --build-arg "BASE_IMAGE=$base" \
    -f "$dockerfile" -t "$tag" "$context" >/dev/null
  record "build:$tag" $(($(date +%s) - started)) "$(docker image inspect -f '{{.Size}}' "$tag")"
  log "$tag built in $(($(date +%s) - started)) s, $(docker image inspect -f '{{.Size}}' "$tag") bytes"
}

build_images() {
  [ -d "$WORK/wheels/flopnet" ] || die "no wheelhouse: run scripts/images.sh wheels first"
  build_image "$NODE_TAG" docker/node.Dockerfile . "$BASE_TAG"
  build_image "$SANDBOX_TAG" docker/sandbox.Dockerfile docker "$SANDBOX_BASE_TAG"
  # Old untagged node images are not kept; the dependency stage is (the build cache).
  docker image prune -f --filter label=org.flopnet.image=node >/dev/null
}

step=${1:-all}
case "$step" in
  tools) ensure_tools ;;
  dockerd) ensure_tools; ensure_dockerd ;;
  base)
    ensure_tools; ensure_dockerd
    make_base "$BASE_TAG" "$BASE_PACKAGES"
    make_base "$SANDBOX_BASE_TAG" "$SANDBOX_PACKAGES"
    ;;
  wheels) make_wheels ;;
  images) ensure_tools; ensure_dockerd; build_images ;;
  all)
    ensure_tools; ensure_dockerd
    make_base "$BASE_TAG" "$BASE_PACKAGES"
    make_base "$SANDBOX_BASE_TAG" "$SANDBOX_PACKAGES"
    make_wheels
    build_images
    ;;
  *) die "unknown step $step (tools, dockerd, base, wheels, images or all)" ;;
esac
