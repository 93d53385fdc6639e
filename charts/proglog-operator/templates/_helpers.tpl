{{/*
The chart name, or nameOverride.
*/}}
{{- define "proglog-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's objects: fullnameOverride, or RELEASE-CHART (just RELEASE
when it already holds the chart name). 63 characters at most (DNS labels).
*/}}
{{- define "proglog-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The helm.sh/chart label: CHART-VERSION.
*/}}
{{- define "proglog-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every object.
*/}}
{{- define "proglog-operator.labels" -}}
helm.sh/chart: {{ include "proglog-operator.chart" . }}
{{ include "proglog-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: proglog
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Labels that select the operator pods (never change them on upgrade: a Deployment's selector
is immutable).
*/}}
{{- define "proglog-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "proglog-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The ServiceAccount's name.
*/}}
{{- define "proglog-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "proglog-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator image: repository:tag or repository@digest; the tag defaults to appVersion.
*/}}
{{- define "proglog-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The Lease's namespace.
*/}}
{{- define "proglog-operator.leaseNamespace" -}}
{{- default .Release.Namespace .Values.leaderElection.leaseNamespace }}
{{- end }}

{{/*
The rules the operator needs on LogClusters and their children, wherever it watches them.
*/}}
{{- define "proglog-operator.rules" -}}
- apiGroups: ["proglog.dev"]
  resources: ["logclusters"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["proglog.dev"]
  resources: ["logclusters/status", "logclusters/scale"]
  verbs: ["get", "patch", "update"]
# Where the OwnerReferencesPermissionEnforcement admission plugin is on (OpenShift, some
# hardened clusters), an owner reference that blocks the owner's deletion needs update on the
# owner's finalizers subresource.
- apiGroups: ["proglog.dev"]
  resources: ["logclusters/finalizers"]
  verbs: ["update"]
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# Its own Services, ConfigMaps and Secrets; it also watches the ACL ConfigMap and CA Secret a
# LogCluster names (get, list and watch cover those).
- apiGroups: [""]
  resources: ["services", "configmaps", "secrets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# A NetworkPolicy per cluster.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# It restarts pods itself, one at a time (the StatefulSet's update strategy is OnDelete),
# through the eviction API, so the PodDisruptionBudget holds.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "delete"]
- apiGroups: [""]
  resources: ["pods/eviction"]
  verbs: ["create"]
# Storage growth: it patches the PVCs' requested size.
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
