{{/* Names, labels and lists the templates share, defined once. */}}

{{/* The release's base name: the release name, or release-chart when the release name does not hold the chart's. */}}
{{- define "silverline.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The operator's name: its ServiceAccount, Deployment, Service, RBAC and PodDisruptionBudget. */}}
{{- define "silverline.operator" -}}
{{- printf "%s-operator" (include "silverline.fullname" .) -}}
{{- end -}}

{{- define "silverline.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: silverline
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* Selects the operator's pods (stable across upgrades: never add a label here). */}}
{{- define "silverline.operatorSelector" -}}
app.kubernetes.io/name: silverline-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The common labels (with the instance) and the operator's name: a superset of silverline.operatorSelector. */}}
{{- define "silverline.operatorLabels" -}}
{{ include "silverline.labels" . }}
app.kubernetes.io/name: silverline-operator
app.kubernetes.io/component: operator
{{- end -}}

{{- define "silverline.image" -}}
{{- $reference := printf "%s:%s" .image.repository (default .chart.AppVersion .image.tag) -}}
{{- if .image.digest }}{{ $reference = printf "%s@%s" $reference .image.digest }}{{ end -}}
{{- $reference -}}
{{- end -}}

{{/* The namespaces the workers' ServiceAccount is created in, as a JSON list: workerServiceAccount.namespaces,
     else watchNamespaces, else the release namespace. */}}
{{- define "silverline.workerNamespaces" -}}
{{- $namespaces := .Values.workerServiceAccount.namespaces -}}
{{- if not $namespaces }}{{ $namespaces = .Values.watchNamespaces }}{{ end -}}
{{- if not $namespaces }}{{ $namespaces = list .Release.Namespace }}{{ end -}}
{{- toJson $namespaces -}}
{{- end -}}

{{/* Grants (operator.allowedLakes, operator.allowedInputs) as the operator's flags take them: NAMESPACE=ROOT,
     comma-separated; "root" names the entries' key that holds the root (lake, prefix). */}}
{{- define "silverline.grants" -}}
{{- $root := .root -}}
{{- $grants := list -}}
{{- range .grants -}}
{{- $grants = append $grants (printf "%s=%s" .namespace (index . $root)) -}}
{{- end -}}
{{- join "," $grants -}}
{{- end -}}
