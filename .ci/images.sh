#!/usr/bin/env bash
# Builds the node and operator images from docker/*.Dockerfile with podman, then runs the node
# image as a three-container cluster on a podman network and checks it: a leader is elected,
# the image's `proglog` CLI produces and consumes, and the nodes run as uid 65532 on a read-only
# root file system.
#
# For CI on a fresh Debian 12 machine, as root, where no container registry is reachable: the
# base images are local stand-ins made from Debian packages with debootstrap, passed to the
# Dockerfiles as BUILDER_IMAGE (minbase, gcc and this machine's Rust toolchain) and
# RUNTIME_IMAGE (minbase, CA certificates, user and group 65532 "nonroot").
#
# Speed: the Dockerfiles' own `cargo build --release --locked` runs, but with this checkout's
# target/ as its /src/target cache mount (see below) and the host's cargo registry mounted at
# its host path (the builder's CARGO_HOME is the host's: the fingerprints of registry crates
# hash their source path, those of workspace crates do not). So the release build .ci/run made
# on the host, with the Dockerfiles' CARGO_PROFILE_RELEASE_STRIP, is fresh inside: the node
# image's build compiles nothing, the operator image's only what the node does not use.
# Without that host build this still works, from scratch and slowly.
#
# Usage: .ci/images.sh   (as root; installs podman, runc, netavark, aardvark-dns, debootstrap)
set -euo pipefail
cd "$(dirname "$0")/.."

NODE_IMAGE=localhost/proglog/proglog-node:ci
OPERATOR_IMAGE=localhost/proglog/proglog-operator:ci
NETWORK=proglog-ci
NODES=(node-0 node-1 node-2)
cargo_home=${CARGO_HOME:-$HOME/.cargo}
sysroot=$(rustc --print sysroot)
rust_version=$(rustc --version | cut -d' ' -f2)
BUILDER_IMAGE=localhost/proglog-ci/builder:rust-$rust_version
RUNTIME_IMAGE=localhost/proglog-ci/runtime:bookworm

start=$SECONDS
phase() { printf -- '--- %s (%ss)\n' "$*" "$((SECONDS - start))"; }
fail() {
  echo "FAILED: $*" >&2
  exit 1
}
# Runs a command with its output in $work/log, shown only if it fails.
quiet() { "$@" >"$work/log" 2>&1 || { tail -n 30 "$work/log"; fail "$*"; }; }

# Polls `command...` every half second until it succeeds or `seconds` have passed.
wait_for() {
  local seconds=$1 what=$2
  local deadline=$((SECONDS + seconds))
  shift 2
  until "$@"; do
    if ((SECONDS >= deadline)); then
      echo "timed out after $seconds s: $what" >&2
      return 1
    fi
    sleep 0.5
  done
}

work=$(mktemp -d -p "${TMPDIR:-/var/tmp}" proglog-images.XXXXXX)
# Containers get no ulimits of podman's choosing (it cannot raise them in some sandboxes); the
# network backend is netavark even though Debian's podman also ships a CNI configuration.
cat >"$work/containers.conf" <<'EOF'
[containers]
default_ulimits = []
[engine]
runtime = "runc"
[network]
network_backend = "netavark"
EOF
export CONTAINERS_CONF=$work/containers.conf

cleanup() {
  local status=$?
  if [ "$status" -ne 0 ]; then
    for node in "${NODES[@]}"; do
      podman logs "$node" 2>&1 | tail -n 30 | sed "s/^/$node: /" || true
    done
  fi
  podman rm -f -t 0 "${NODES[@]}" >/dev/null 2>&1 || true
  for node in "${NODES[@]}"; do podman volume rm -f "proglog-ci-$node" >/dev/null 2>&1 || true; done
  podman network rm -f "$NETWORK" >/dev/null 2>&1 || true
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

phase "packages"
# As root, podman needs no uidmap, slirp4netns or fuse-overlayfs: netavark makes the bridge
# network, aardvark-dns resolves container names on it, and overlay storage is native.
packages=(podman runc netavark aardvark-dns iptables debootstrap)
export DEBIAN_FRONTEND=noninteractive
if ! dpkg -s "${packages[@]}" >/dev/null 2>&1; then
  quiet apt-get update
  quiet apt-get install -y --no-install-recommends "${packages[@]}"
fi
# A previous run killed before its trap ran may have left these behind.
podman rm -f -t 0 "${NODES[@]}" >/dev/null 2>&1 || true
podman network rm -f "$NETWORK" >/dev/null 2>&1 || true

if ! podman image exists "$RUNTIME_IMAGE" || ! podman image exists "$BUILDER_IMAGE"; then
  phase "stand-in base images: debootstrap"
  # debootstrap needs a mirror: the one apt uses for this release.
  # shellcheck source=/dev/null
  . /etc/os-release
  # shellcheck disable=SC2016 # apt's own $(...) fields
  mirror=$(apt-get indextargets --format '$(REPO_URI)' 'Identifier: Packages' \
    "Release: $VERSION_CODENAME" | head -n 1)
  rootfs=$work/rootfs
  quiet debootstrap --variant=minbase --include=ca-certificates "$VERSION_CODENAME" "$rootfs" \
    "${mirror:-http://deb.debian.org/debian}"
  # The user of distroless's :nonroot images.
  echo 'nonroot:x:65532:' >>"$rootfs/etc/group"
  echo 'nonroot:x:65532:65532:nonroot:/home/nonroot:/usr/sbin/nologin' >>"$rootfs/etc/passwd"
  install -d -o 65532 -g 65532 -m 700 "$rootfs/home/nonroot"
  rootfs_tar() {
    tar --numeric-owner -C "$rootfs" -c --exclude='./var/lib/apt/lists/*' --exclude='./var/cache/apt/*' .
  }

  phase "stand-in base images: runtime (glibc, CA certificates, nonroot 65532)"
  rootfs_tar | podman import -q --change 'USER 65532:65532' --change 'WORKDIR /home/nonroot' \
    - "$RUNTIME_IMAGE" >/dev/null

  phase "stand-in base images: builder (gcc, libc6-dev, the Rust toolchain $rust_version)"
  quiet chroot "$rootfs" apt-get update
  quiet chroot "$rootfs" apt-get install -y --no-install-recommends gcc libc6-dev
  mkdir -p "$rootfs/usr/local/rust"
  cp -a "$sysroot/bin" "$sysroot/lib" "$rootfs/usr/local/rust/"
  rootfs_tar | podman import -q \
    --change 'ENV PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "ENV CARGO_HOME=$cargo_home" - "$BUILDER_IMAGE" >/dev/null
  rm -rf "$rootfs"
fi

# The Dockerfiles' cache mount on /src/target is this checkout's target/: podman 4.3 (buildah
# 1.28) keeps a cache mount without id in $TMPDIR/buildah-cache/<its target path>, and here that
# is a link to target/. (`podman build -v .../target:/src/target` is not enough: when a volume
# and a cache mount have one destination, either may win.) The registry is mounted with -v.
mkdir -p target "$cargo_home/registry" "$work/tmp/buildah-cache/src"
ln -s "$PWD/target" "$work/tmp/buildah-cache/src/target"
# Niced, so that a developer's own builds keep the CPU (in CI nothing else runs).
build_image() {
  TMPDIR=$work/tmp nice -n 19 podman build -f "docker/$1.Dockerfile" -t "$2" \
    --build-arg BUILDER_IMAGE="$BUILDER_IMAGE" --build-arg RUNTIME_IMAGE="$RUNTIME_IMAGE" \
    -v "$cargo_home/registry:$cargo_home/registry" .
}
phase "podman build -f docker/node.Dockerfile"
build_image node "$NODE_IMAGE"
# Buildah leaves a lock file in the cache directories it uses: it found the link.
[ -e target/buildah-cache-lockfile ] || fail "podman build did not use target/ as its cache mount"
phase "podman build -f docker/operator.Dockerfile"
build_image operator "$OPERATOR_IMAGE"
podman run --rm "$NODE_IMAGE" --version
podman run --rm "$OPERATOR_IMAGE" --version

phase "three node containers on the podman network $NETWORK"
podman network create "$NETWORK" >/dev/null
# As the operator runs the pods (operator/tests/golden/minimal.yaml), in plaintext: the image's
# user, a read-only root with a tmpfs /tmp, no capabilities, a volume per node, the id as
# host name, every node an initial voter, gossip joined through the others' names. (The DNS
# server of the network, aardvark-dns, may say "failed to connect to syslog": there is none.)
for node in "${NODES[@]}"; do
  podman run -d --name "$node" --hostname "$node" --network "$NETWORK" \
    --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges \
    -v "proglog-ci-$node:/var/lib/proglog" \
    -e PROGLOG_ID="$node" -e PROGLOG_ADVERTISE_ADDR="$node:8400" \
    -e PROGLOG_INITIAL_VOTERS=node-0,node-1,node-2 \
    -e PROGLOG_JOIN=node-0:8401,node-1:8401,node-2:8401 \
    "$NODE_IMAGE" >/dev/null
done
# The CLI of the image, in a container of its own on the network, as a client would be.
cli() {
  timeout 60 podman run --rm --network "$NETWORK" --read-only --entrypoint proglog "$NODE_IMAGE" \
    --addr "$1" --timeout 5s "${@:2}"
}
# Formed: each node lists the three members and names the same one leader (a node that has not
# heard from the leader yet may still start an election).
formed() {
  local node
  for node in "${NODES[@]}"; do
    cli "$node:8400" servers >"$work/servers-$node" 2>&1 || return 1
    [ "$(wc -l <"$work/servers-$node")" -eq 3 ] || return 1
  done
  [ "$(cat "$work"/servers-node-* | grep 'leader$' | tee "$work/leaders" | wc -l)" -eq 3 ] &&
    [ "$(sort -u "$work/leaders" | wc -l)" -eq 1 ]
}
wait_for 120 "every node naming the same leader" formed ||
  { tail -n +1 "$work"/servers-node-*; fail "no cluster"; }
cat "$work/servers-node-0"
# Settled: each node's gauges (/metrics, read from the host) show one epoch, three voters and the
# epoch's first record (the voter set) replicated, one node leads, and so for 3 s (a leader whose
# followers do not fetch steps down within 2 s; a first leader has been seen to, under load).
settled() {
  local addrs
  addrs=$(podman inspect -f '{{.Name}}={{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "${NODES[@]}")
  # shellcheck disable=SC2086 # one name=ip argument per node
  python3 - $addrs >"$work/state" 2>&1 <<'PY' || return 1
import sys, urllib.request
nodes = {}
for arg in sys.argv[1:]:
    name, ip = arg.split("=")
    text = urllib.request.urlopen(f"http://{ip}:9400/metrics", timeout=3).read().decode()
    m = dict(line.split()[:2] for line in text.splitlines() if line.startswith("proglog_"))
    log = '{log="default"}'
    nodes[name] = [m["proglog_" + g] for g in ("leader_epoch" + log, "is_leader" + log, "voters", "log_high_watermark" + log)]
print("; ".join(f"{name}: epoch {e}, is_leader {l}, voters {v}, high watermark {h}"
                for name, (e, l, v, h) in nodes.items()))
gauges = nodes.values()
sys.exit(not (len({e for e, _, _, _ in gauges}) == 1 and [l for _, l, _, _ in gauges].count("1") == 1
              and all(v == "3" and int(h) >= 1 for _, _, v, h in gauges)))
PY
  if ! cmp -s "$work/state" "$work/settled"; then
    cp "$work/state" "$work/settled"
    settled_at=$SECONDS
    return 1
  fi
  ((SECONDS - settled_at >= 3))
}
touch "$work/settled"
wait_for 60 "a leader keeping its epoch for 3 s" settled || { cat "$work/state"; fail "not settled"; }
cat "$work/state"

phase "produce and consume through the network"
cli node-1:8400 produce a b c
# --follow: node-2 may not have the records yet when the leader acknowledges them.
consumed=$(cli node-2:8400 consume --from 0 --follow --count 3 | cut -f2 | tr '\n' ' ')
[ "$consumed" = "a b c " ] || fail "consumed '$consumed', not 'a b c '"
echo "produced a b c through node-1, consumed them from node-2"

phase "uid and read-only root file system"
for node in "${NODES[@]}"; do
  pid=$(podman inspect --format '{{.State.Pid}}' "$node")
  # Real, effective, saved and file-system ids of proglog-node, seen from the host.
  grep -Eq '^Uid:\s+65532\s+65532\s+65532\s+65532$' "/proc/$pid/status" ||
    fail "$node: $(grep '^Uid:' "/proc/$pid/status")"
  grep -Eq '^Gid:\s+65532\s+65532\s+65532\s+65532$' "/proc/$pid/status" ||
    fail "$node: $(grep '^Gid:' "/proc/$pid/status")"
  # Its root, through /proc: writing fails with EROFS (root here is not stopped by permissions).
  if probe=$(touch "/proc/$pid/root/ci-probe" 2>&1) || [[ $probe != *"Read-only file system"* ]]; then
    fail "$node: writing to / did not fail as read-only: ${probe:-it succeeded}"
  fi
  [ -w "/proc/$pid/root/tmp" ] || fail "$node: /tmp is not writable"
done
echo "node-0..2 run as 65532:65532; writing to / fails (read-only), /tmp is writable"

phase "done"
