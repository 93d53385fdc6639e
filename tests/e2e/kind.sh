#!/usr/bin/env bash
# End to end on kind: builds the node and operator images, creates a kind cluster (or reuses
# one of that name), loads the images, installs the operator chart and runs
# operator/tests/e2e.rs against it (a 3-node LogCluster: produce, consume, scale, delete).
#
# Usage: tests/e2e/kind.sh      (needs docker with BuildKit, kind, kubectl, helm 3.8+, cargo)
# Environment (all optional):
#   KIND_CLUSTER=proglog-e2e        the kind cluster's name; reused when it exists
#   KIND_NODE_IMAGE=                a new cluster's node image, e.g. kindest/node:v1.30.13 for
#                                   the oldest Kubernetes supported (default: kind's own)
#   TAG=e2e                         tag of the two images built (proglog-node, proglog-operator)
#   OPERATOR_NAMESPACE=proglog-system, PROGLOG_E2E_NAMESPACE=proglog-e2e (the test's namespace)
#   PROGLOG_E2E_PREVIOUS_IMAGE=     a node image to upgrade from: loaded into kind when docker
#                                   has it (else the kubelet pulls it), left in the test's env
#   SKIP_BUILD=1                    use the images already built with TAG
#   KEEP_CLUSTER=1                  keep the cluster and kubeconfig; otherwise a cluster this
#                                   run created is deleted at the end (a reused one never is)
set -euo pipefail
cd "$(dirname "$0")/../.."

cluster=${KIND_CLUSTER:-proglog-e2e}
tag=${TAG:-e2e}
operator_namespace=${OPERATOR_NAMESPACE:-proglog-system}
node_image=proglog-node:$tag
operator_image=proglog-operator:$tag
for tool in docker kind kubectl helm cargo; do
  command -v "$tool" >/dev/null || { echo "kind.sh: $tool is not on PATH" >&2; exit 1; }
done

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  DOCKER_BUILDKIT=1 docker build -f docker/node.Dockerfile -t "$node_image" .
  DOCKER_BUILDKIT=1 docker build -f docker/operator.Dockerfile -t "$operator_image" .
fi

created=0
kubeconfig=$(mktemp "${TMPDIR:-/tmp}/proglog-e2e-kubeconfig.XXXXXX")
cleanup() {
  local status=$?
  if [ "$status" -ne 0 ] && [ -s "$kubeconfig" ]; then
    kubectl --kubeconfig "$kubeconfig" get logclusters,statefulsets,pods -A -o wide || true
    kubectl --kubeconfig "$kubeconfig" -n "$operator_namespace" logs deployment/proglog-operator --tail=100 || true
  fi
  if [ "${KEEP_CLUSTER:-0}" = 1 ]; then
    echo "kept kind cluster $cluster; kubeconfig: $kubeconfig"
  else
    rm -f "$kubeconfig"
    if [ "$created" = 1 ]; then kind delete cluster --name "$cluster" || true; fi
  fi
  exit "$status"
}
trap cleanup EXIT

if kind get clusters 2>/dev/null | grep -qxF "$cluster"; then
  echo "reusing kind cluster $cluster"
else
  created=1
  kind create cluster --name "$cluster" ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} --wait 120s
fi
kind get kubeconfig --name "$cluster" >"$kubeconfig"

kind load docker-image --name "$cluster" "$node_image" "$operator_image"
previous=${PROGLOG_E2E_PREVIOUS_IMAGE:-}
if [ -n "$previous" ] && docker image inspect "$previous" >/dev/null 2>&1; then
  kind load docker-image --name "$cluster" "$previous"
fi

# The image ID as a pod annotation: a rebuilt image with the same tag rolls the operator.
helm upgrade --install proglog-operator charts/proglog-operator --kubeconfig "$kubeconfig" \
  -n "$operator_namespace" --create-namespace --wait --timeout 5m \
  --set image.repository=proglog-operator --set image.tag="$tag" --set image.pullPolicy=Never \
  --set-string "podAnnotations.proglog\.dev/image-id=$(docker image inspect -f '{{.Id}}' "$operator_image")"

export PROGLOG_E2E_KUBECONFIG=$kubeconfig
export PROGLOG_E2E_IMAGE=$node_image
export PROGLOG_E2E_NAMESPACE=${PROGLOG_E2E_NAMESPACE:-proglog-e2e}
cargo test --locked -p proglog-operator --test e2e -- --nocapture
