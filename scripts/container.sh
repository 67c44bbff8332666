#!/usr/bin/env bash
# Build lossd's image with podman from the Dockerfile as users get it (--format docker, which keeps HEALTHCHECK),
# here and in CI, where no registry for base images may be reachable.
#
#   scripts/container.sh base     # print the base image: PYTHON_IMAGE when it can be pulled, else a stand-in
#   scripts/container.sh conf     # print a containers.conf for this machine's quirks (empty when none), see below
#   scripts/container.sh build    # build localhost/lossd:test (IMAGE=... to rename) on that base; print its name
#
# The layer cache makes a repeated build take seconds (a change to service/ rebuilds its last layer only); builds
# wait for each other (flock), so that `make test` can start one early, in the background, for the tests to reuse.
#
# The stand-in base: Debian bookworm (minbase) with python3 (3.11), python3-venv and ca-certificates, made with
# debootstrap from the Debian mirror in this machine's apt sources, /usr/local/bin/python -> python3 (as in the
# python image), imported as BASE_TAG and reused while it exists (`podman rmi` it to rebuild).
#
# The host's pip settings reach the build stage only: its config files and the local paths they name (CA bundle,
# find-links, file:// indexes) as read-only build volumes, its PIP_* variables as build arguments that the
# Dockerfile declares in that stage. TORCH_INDEX_URL is empty unless given: torch comes from the host's indexes
# and find-links, and must match the lock's hash all the same.
#
# Machine quirks: where podman's default runtime cannot start a container (crun refuses hybrid cgroups) or
# cannot raise the rlimits it asks for (no CAP_SYS_RESOURCE in a sandbox), `conf` writes a containers.conf with
# runc and the host's own limits; `build` uses it, and so must every podman command after it:
# export CONTAINERS_CONF="$(scripts/container.sh conf)" (empty output: nothing to set).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON_IMAGE=${PYTHON_IMAGE:-python:3.11-slim-bookworm}
BASE_TAG=${BASE_TAG:-localhost/lossd-python:3.11-bookworm-standin}
IMAGE=${IMAGE:-localhost/lossd:test}
STATE=${LOSSD_CONTAINER_STATE:-/var/tmp/lossd-container}
PULL_TIMEOUT_S=${PULL_TIMEOUT_S:-60}
mkdir -p "$STATE"

log() { echo "container.sh: $*" >&2; }
die() { log "$*"; exit 1; }

command -v podman >/dev/null || die "podman is not installed (make install-podman, as root)"

# The first Debian mirror of this machine's apt sources (deb822 .sources files, then sources.list).
debian_mirror() {
  local f uri
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    uri=$(awk '/^URIs:/ {print $2}' "$f" | grep -v -- '-security' | head -n1 || true)
    [ -n "$uri" ] && { echo "$uri"; return; }
  done
  if [ -r /etc/apt/sources.list ]; then
    uri=$(awk '$1 == "deb" && $0 !~ /-security/ {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' \
      /etc/apt/sources.list)
    [ -n "$uri" ] && { echo "$uri"; return; }
  fi
  return 1
}

standin() {
  if podman image exists "$BASE_TAG"; then echo "$BASE_TAG"; return; fi
  command -v debootstrap >/dev/null || die "debootstrap is not installed (make install-podman, as root)"
  local mirror root
  mirror=$(debian_mirror) || die "no Debian mirror in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list"
  root=$(mktemp -d "$STATE/rootfs.XXXXXX")
  log "building the stand-in base $BASE_TAG with debootstrap (a minute or two)"
  if ! debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" "$mirror" \
    >"$STATE/debootstrap.log" 2>&1; then
    tail -n 20 "$STATE/debootstrap.log" >&2
    rm -rf "$root"
    die "debootstrap failed (log: $STATE/debootstrap.log)"
  fi
  ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | podman import --quiet --change 'CMD ["python3"]' - "$BASE_TAG" >/dev/null
  rm -rf "$root"
  echo "$BASE_TAG"
}

base() {
  if podman image exists "$PYTHON_IMAGE"; then echo "$PYTHON_IMAGE"; return; fi
  if timeout "$PULL_TIMEOUT_S" podman pull -q "$PYTHON_IMAGE" >"$STATE/pull.log" 2>&1; then
    echo "$PYTHON_IMAGE"
    return
  fi
  log "$PYTHON_IMAGE cannot be pulled here ($(tail -n1 "$STATE/pull.log")): using a stand-in"
  standin
}

# A containers.conf for this machine when podman's defaults cannot run a container here; its path, or nothing.
conf() {
  local image=$1 out="$STATE/containers.conf" err
  unset CONTAINERS_CONF
  if podman run --rm --network none "$image" true 2>"$STATE/probe.log"; then return; fi
  command -v runc >/dev/null || { cat "$STATE/probe.log" >&2; die "podman cannot run a container here, and runc is not installed"; }
  cat >"$out" <<EOF
# Written by scripts/container.sh: podman's defaults cannot start a container on this machine.
[containers]
default_ulimits = ["nofile=$(ulimit -Hn):$(ulimit -Hn)", "nproc=4096:4096"]
[engine]
runtime = "runc"
EOF
  if ! err=$(CONTAINERS_CONF=$out podman run --rm --network none "$image" true 2>&1); then
    cat "$STATE/probe.log" >&2
    die "podman cannot run a container here, with its defaults or with runc: $err"
  fi
  echo "$out"
}

# A Python with pip, to read pip's settings: PIP_PYTHON, else the project's venv, else python3.
pip_python() {
  if [ -n "${PIP_PYTHON:-}" ]; then echo "$PIP_PYTHON"; elif [ -x .venv/bin/python ]; then echo .venv/bin/python; else echo python3; fi
}

# The host's pip settings, as options of podman's build: volumes for its config files and the local paths they name,
# build arguments for its PIP_* variables.
pip_options() {
  local f value path seen=" "
  add_volume() {  # a path, mounted read-only at the same place, unless it or a folder above it already is
    local p
    [ -e "$1" ] || return 0
    for p in $seen; do case "$1/" in "$p"/*) return 0 ;; esac; done
    seen="$seen$1 "
    echo "--volume=$1:$1:ro"
  }
  for f in /etc/pip.conf /etc/xdg/pip "${PIP_CONFIG_FILE:-}"; do [ -n "$f" ] && add_volume "$f"; done
  # the user's pip.conf: the build stage runs as root, whose HOME is /root
  for f in "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf"; do
    [ -f "$f" ] && echo "--volume=$f:/root/${f#"$HOME"/}:ro"
  done
  # every absolute path or file:// URL among pip's settings (files and environment)
  while IFS= read -r value; do
    for path in $value; do
      case "$path" in
        # a local index (root/simple/NAME/ links to ../../files/...): its parent folder
        file:///*) add_volume "$(dirname "${path#file://}")" ;;
        /*) add_volume "$path" ;;
      esac
    done
  done < <("$(pip_python)" -m pip config list 2>/dev/null | sed -n "s/^[^=]*='\(.*\)'$/\1/p")
  for f in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_TRUSTED_HOST PIP_CERT PIP_DEFAULT_TIMEOUT; do
    [ -n "${!f:-}" ] && echo "--build-arg=$f=${!f}"
  done
  return 0
}

build() {
  local from options=()
  exec 9>"$STATE/build.lock"  # one build at a time (make test's early build, both pytest workers): later ones
  flock 9                     # wait, then find every layer cached
  from=$(base)
  local conf_path
  conf_path=$(conf "$from")
  [ -n "$conf_path" ] && export CONTAINERS_CONF=$conf_path
  mapfile -t options < <(pip_options)
  log "podman build --format docker -t $IMAGE (base $from)"
  podman build --format docker --layers -t "$IMAGE" \
    --build-arg "PYTHON_IMAGE=$from" --build-arg "TORCH_INDEX_URL=${TORCH_INDEX_URL:-}" \
    "${options[@]}" -f Dockerfile . >"$STATE/build.log" 2>&1 || { tail -n 40 "$STATE/build.log" >&2; die "podman build failed"; }
  echo "$IMAGE"
}

case "${1:-}" in
  base) base ;;
  conf) if podman image exists "$IMAGE"; then conf "$IMAGE"; else conf "$(base)"; fi ;;
  build) build ;;
  *) die "usage: scripts/container.sh base|conf|build" ;;
esac
