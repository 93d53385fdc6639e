{{/*
The chart name, or nameOverride.
*/}}
{{- define "proglog-cluster.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The LogCluster's name: fullnameOverride, or the release name. The operator names pods
NAME-ORDINAL and labels them with NAME-HASH, so the CRD allows 52 characters at most.
*/}}
{{- define "proglog-cluster.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- end }}

{{/*
The helm.sh/chart label: CHART-VERSION.
*/}}
{{- define "proglog-cluster.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of the chart's objects. The operator gives the objects it makes its own labels.
*/}}
{{- define "proglog-cluster.labels" -}}
helm.sh/chart: {{ include "proglog-cluster.chart" . }}
app.kubernetes.io/name: {{ include "proglog-cluster.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ include "proglog-cluster.version" . | quote }}
app.kubernetes.io/part-of: proglog
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
The proglog version: `version`, or appVersion.
*/}}
{{- define "proglog-cluster.version" -}}
{{- default .Chart.AppVersion .Values.version }}
{{- end }}

{{/*
The node image the cluster runs, for NOTES: `image`, or the operator's default.
*/}}
{{- define "proglog-cluster.image" -}}
{{- default (printf "ghcr.io/proglog/proglog-node:%s" (include "proglog-cluster.version" .)) .Values.image }}
{{- end }}

{{/*
The ConfigMap the chart writes acl.policy to.
*/}}
{{- define "proglog-cluster.aclConfigMapName" -}}
{{- printf "%s-acl-users" (include "proglog-cluster.fullname" .) }}
{{- end }}
