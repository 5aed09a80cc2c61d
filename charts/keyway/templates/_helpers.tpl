{{/* Chart name, overridable. */}}
{{- define "keyway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Fully qualified release name, at most 63 characters minus the longest suffix the chart appends
("-sidecar-injector", 17), so every derived object name stays a valid DNS label.
*/}}
{{- define "keyway.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 46 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 46 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 46 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "keyway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object the chart creates (uninstall checks find them by these). */}}
{{- define "keyway.labels" -}}
helm.sh/chart: {{ include "keyway.chart" . }}
{{ include "keyway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: keyway
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "keyway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "keyway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Per-component names and selectors. */}}
{{- define "keyway.controller.fullname" -}}
{{- printf "%s-controller" (include "keyway.fullname" .) -}}
{{- end -}}

{{- define "keyway.gateway.fullname" -}}
{{- printf "%s-gateway" (include "keyway.fullname" .) -}}
{{- end -}}

{{- define "keyway.controller.selectorLabels" -}}
{{ include "keyway.selectorLabels" . }}
app.kubernetes.io/component: controller
{{- end -}}

{{- define "keyway.gateway.selectorLabels" -}}
{{ include "keyway.selectorLabels" . }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "keyway.controller.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "keyway.controller.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "keyway.gateway.serviceAccountName" -}}
{{- default (include "keyway.gateway.fullname" .) .Values.gateway.serviceAccount.name -}}
{{- end -}}

{{/* The one image holding both binaries. */}}
{{- define "keyway.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Names shared by the controller flags, RBAC and the webhook configuration. */}}
{{- define "keyway.leaseName" -}}
{{- default (include "keyway.controller.fullname" .) .Values.leaderElection.leaseName -}}
{{- end -}}

{{- define "keyway.webhookConfigName" -}}
{{- printf "%s-sidecar-injector" (include "keyway.fullname" .) -}}
{{- end -}}

{{- define "keyway.webhookSecretName" -}}
{{- printf "%s-webhook-tls" (include "keyway.fullname" .) -}}
{{- end -}}

{{/* http(s)://<fullname>-controller.<ns>.svc:<grpc port>, what proxies dial (https when the
gRPC listener has TLS). */}}
{{- define "keyway.controllerUrl" -}}
{{- $scheme := ternary "http" "https" (and .Values.controller.grpcPlaintext (empty .Values.controller.grpcTlsSecret)) -}}
{{- printf "%s://%s.%s.svc:%d" $scheme (include "keyway.controller.fullname" .) .Release.Namespace (int .Values.controller.grpcPort) -}}
{{- end -}}

{{/* The audience of proxy tokens: the gateway's own setting, else the controller's. */}}
{{- define "keyway.gateway.tokenAudience" -}}
{{- if .Values.controller.allowAnyTokenAudience -}}
{{- .Values.gateway.tokenAudience -}}
{{- else -}}
{{- default .Values.controller.tokenAudience .Values.gateway.tokenAudience -}}
{{- end -}}
{{- end -}}

{{/* The hardened container securityContext both components use. */}}
{{- define "keyway.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "keyway.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The namespaced rules for watched namespaces (see rbac.yaml). */}}
{{- define "keyway.rbac.watchedRules" -}}
- apiGroups: ["keyway.dev"]
  resources: ["loadbalancerpools", "apikeypools"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["keyway.dev"]
  resources: ["loadbalancerpools/status", "apikeypools/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}
