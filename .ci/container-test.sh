#!/usr/bin/env bash
# The container image, built and run for real (Dockerfile; tests/test_container.py).
#
# Registry base images cannot be pulled on the CI machine, so the base is made locally
# from Debian packages: debootstrap (minbase + python3, python3-venv, ca-certificates),
# imported into podman as localhost/debian-py:bookworm and reused while it is in podman's
# storage. The relay image is built from the Dockerfile with BASE_IMAGE set to it, then
# tests/test_container.py runs the image: init --stdout, /health, register, store a key,
# relay to a mock provider on the host (host network, loopback only), restart on the same
# volume, graceful stop.
#
# Machine quirks: the default crun runtime is refused here (runc is used) and so are the
# host's ulimits (explicit nofile/nproc). A machine where podman cannot run a container at
# all gets a loud SKIP with the reason (exit 0; exit 1 with REQUIRE_CONTAINER=1); once the
# image is built, a failing container test fails CI.
#
#   bash .ci/container-test.sh                 # as root; REBUILD_BASE=1 re-makes the base
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE=${BASE_IMAGE:-localhost/debian-py:bookworm}
RELAY_IMAGE=${RELAY_IMAGE:-localhost/byok-relay:ci}
SUITE=${DEBIAN_SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PODMAN=(podman --runtime runc --cgroup-manager cgroupfs)
LIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)

skip() {
  {
    echo
    echo "################################################################################"
    echo "## CONTAINER TEST SKIPPED: $*"
    echo "################################################################################"
    echo
  } >&2
  if [ "${REQUIRE_CONTAINER:-}" = 1 ]; then
    echo "REQUIRE_CONTAINER=1: a skipped container test is a failure" >&2
    exit 1
  fi
  exit 0
}

now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }

echo "== container image (podman, base made locally with debootstrap)"
[ "$(uname -s)" = Linux ] || skip "needs Linux (podman, debootstrap)"
[ "$(id -u)" = 0 ] || skip "needs root (debootstrap and rootful podman); run as root"

missing=""
command -v podman >/dev/null 2>&1 || missing="$missing podman"
command -v runc >/dev/null 2>&1 || missing="$missing runc"
command -v debootstrap >/dev/null 2>&1 || missing="$missing debootstrap"
if [ -n "$missing" ]; then
  command -v apt-get >/dev/null 2>&1 || skip "missing$missing and no apt-get to install them"
  t=$(now)
  { apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 \
           --no-install-recommends $missing; } >/dev/null \
    || skip "could not install$missing with apt-get"
  echo "installed$missing in $(took "$t")"
fi
podman_version=$(podman --version)
info_err=$("${PODMAN[@]}" info 2>&1 >/dev/null) || skip "podman does not work here: $info_err"

timing_base="reused"
if [ "${REBUILD_BASE:-}" = 1 ] || ! podman image exists "$BASE_IMAGE"; then
  t=$(now)
  rootfs=$(mktemp -d /var/tmp/byok-rootfs.XXXXXX)
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      "$SUITE" "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1 \
    || { tail -5 "$rootfs.log" >&2; rm -f "$rootfs.log"; skip "debootstrap $SUITE from $MIRROR failed (see above)"; }
  rm -f "$rootfs.log"
  # The base trusts what this host trusts: the build's pip reaches PyPI from here, possibly
  # through a TLS-inspecting proxy whose CA only the host's store has (pip reads PIP_CERT).
  if [ -s /etc/ssl/certs/ca-certificates.crt ]; then
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
  fi
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | podman import --quiet \
      --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
      --change 'LABEL org.byok-relay.ci=1' - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
  timing_base="made in $(took "$t") (debootstrap + import)"
fi
echo "base $BASE_IMAGE: $timing_base"
run_err=$("${PODMAN[@]}" run --rm "${LIMITS[@]}" --network none "$BASE_IMAGE" \
            python3 -c 'import venv, sys; assert sys.version_info >= (3, 11)' 2>&1) \
  || skip "podman cannot run a container from $BASE_IMAGE here: $run_err"

t=$(now)
# --format docker keeps the HEALTHCHECK (OCI image configs have none); --network host for
# pip (no bridge needed at build time). The build stage is tagged too, so that pruning this
# script's older images keeps the dependency layer (rebuilt only when pyproject.toml
# changes): the storage stays at about one image's size however often CI runs.
build() {
  "${PODMAN[@]}" build --quiet --format docker --network host "${LIMITS[@]}" \
      --label org.byok-relay.ci=1 --build-arg BASE_IMAGE="$BASE_IMAGE" "$@" . >/dev/null
}
build --target build -t "$RELAY_IMAGE-build"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
build -t "$RELAY_IMAGE" --build-arg BUILD_COMMIT="$commit" --build-arg BUILD_TIME="$(date -u +%FT%TZ)"
# As fly.toml builds it (starts as root, gives /data to the relay user, drops to it).
build -t "$RELAY_IMAGE-root" --build-arg RUN_AS=root --build-arg BUILD_COMMIT="$commit"
timing_build=$(took "$t")
podman image prune --force --filter label=org.byok-relay.ci=1 >/dev/null || true
echo "image $RELAY_IMAGE built in $timing_build ($podman_version, runc $(runc --version | awk 'NR==1 {print $3}'))"

py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
t=$(now)
rc=0
BYOK_CONTAINER_IMAGE="$RELAY_IMAGE" BYOK_CONTAINER_ROOT_IMAGE="$RELAY_IMAGE-root" \
  BYOK_CONTAINER_COMMIT="$commit" REQUIRE_CONTAINER=1 \
  "$py" -m pytest -q -p no:cacheprovider tests/test_container.py || rc=$?
echo "== container timings: base $timing_base; image build $timing_build; tests $(took "$t")"
exit "$rc"
