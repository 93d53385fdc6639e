#!/usr/bin/env bash
# Validates what the operator produces against the Kubernetes OpenAPI schemas, with the
# kubernetes-validate Python package (--strict: unknown fields are errors), at the oldest and
# the newest Kubernetes versions proglog supports:
#   - the CRD, crds/logcluster.yaml (it must also be what crdgen prints: checked by
#     `cargo test -p proglog-operator --test crd`);
#   - every object `proglog-operator render` prints for each operator/tests/golden/*.input.yaml,
#     certificates included.
# LogCluster instances themselves cannot be checked this way (the package knows only built-in
# kinds); their CEL rules are tested in operator/tests/crd.rs.
#
# Usage: .ci/validate-k8s.sh [path/to/proglog-operator]  (default: builds the debug binary)
set -euo pipefail
cd "$(dirname "$0")/.."

# The oldest version is the charts' kubeVersion (>=1.30.0-0), not the k8s-openapi feature the
# operator is built with (operator/Cargo.toml: v1_33, the oldest k8s-openapi 0.29 has): what
# matters is the fields the operator sends, and every one it renders is in the 1.30 schemas
# (the quantity library of the CRD's CEL rules needs 1.29). The newest is the newest
# kubernetes-validate knows.
KUBERNETES_VERSIONS=(1.30.0 1.37.0)
# 1.37.0 bundles the schemas of Kubernetes 1.25 to 1.37.
KUBERNETES_VALIDATE_VERSION=1.37.0

operator=${1:-}
if [ -z "$operator" ]; then
  cargo build --locked -q -p proglog-operator --bin proglog-operator
  operator=target/debug/proglog-operator
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check \
  "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"

files=(crds/logcluster.yaml)
for input in operator/tests/golden/*.input.yaml; do
  rendered="$work/$(basename "$input" .input.yaml).yaml"
  "$operator" render -f "$input" --now 2026-06-01T12:00:00Z >"$rendered"
  files+=("$rendered")
done

status=0
for version in "${KUBERNETES_VERSIONS[@]}"; do
  echo "kubernetes-validate --strict, Kubernetes $version: ${#files[@]} files"
  # --quiet prints only failures and warnings; a warning (an unknown kind) is a failure here.
  if ! output=$("$work/venv/bin/kubernetes-validate" --strict --quiet -k "$version" "${files[@]}" 2>&1); then
    status=1
  fi
  if [ -n "$output" ]; then
    printf '%s\n' "$output"
    status=1
  fi
done
if [ "$status" -ne 0 ]; then
  echo "validation failed" >&2
  exit 1
fi
objects=$(grep -c '^kind:' "${files[@]}" | awk -F: '{sum += $2} END {print sum}')
echo "all $objects objects valid at Kubernetes ${KUBERNETES_VERSIONS[*]}"
