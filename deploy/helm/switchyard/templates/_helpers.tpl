{{/* Labels every object of the release carries. */}}
{{- define "switchyard.labels" -}}
app.kubernetes.io/part-of: switchyard
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "switchyard.image" -}}
{{- $root := index . 0 -}}{{- $override := index . 1 | default dict -}}
{{- printf "%s:%s" ($override.repository | default $root.Values.image.repository) ($override.tag | default $root.Values.image.tag | default $root.Chart.AppVersion) -}}
{{- end -}}

{{/* The NATS chart's fullname (its own rule: the release name if it holds "nats"). */}}
{{- define "switchyard.natsName" -}}
{{- if contains "nats" .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}{{- else -}}{{ printf "%s-nats" .Release.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "switchyard.natsUrl" -}}
{{- .Values.broker.natsUrl | default (printf "nats://%s:4222" (include "switchyard.natsName" .)) -}}
{{- end -}}

{{- define "switchyard.redisUrl" -}}
{{- .Values.broker.redisUrl | default (printf "redis://%s-redis:6379" .Release.Name) -}}
{{- end -}}

{{- define "switchyard.natsMonitoring" -}}
{{- .Values.broker.natsMonitoringEndpoint | default (printf "%s-headless.%s.svc.%s:8222" (include "switchyard.natsName" .) .Release.Namespace .Values.broker.clusterDomain) -}}
{{- end -}}

{{/*
A model name as one NATS token, exactly as switchyard_schemas::subject::encode_token makes it:
[A-Za-z0-9_-] stay, every other byte becomes ~XX (upper-case hex of its UTF-8 bytes).
*/}}
{{- define "switchyard.token" -}}
{{- range $c := splitList "" . -}}
{{- if regexMatch "^[A-Za-z0-9_-]$" $c -}}{{ $c }}{{- else -}}{{ regexReplaceAll "(..)" (printf "%X" $c) "~${1}" }}{{- end -}}
{{- end -}}
{{- end -}}

{{/* Durable consumer of one lane: subject::job_consumer. Argument: list lane kind model. */}}
{{- define "switchyard.consumer" -}}
{{- printf "sy-%s-%s-%s" (index . 0) (index . 1) (include "switchyard.token" (index . 2)) -}}
{{- end -}}

{{/* SWITCHYARD_NATS_URL / SWITCHYARD_REDIS_URL (unless a Secret brings them), SWITCHYARD_LOG and extra env. Argument: list root envFromSecret env. */}}
{{- define "switchyard.env" -}}
{{- $root := index . 0 -}}
{{- if not (index . 1) }}
- name: SWITCHYARD_NATS_URL
  value: {{ include "switchyard.natsUrl" $root | quote }}
- name: SWITCHYARD_REDIS_URL
  value: {{ include "switchyard.redisUrl" $root | quote }}
{{- end }}
- name: SWITCHYARD_LOG
  value: {{ $root.Values.logLevel | quote }}
{{- range $name, $value := index . 2 }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{- define "switchyard.envFrom" -}}
{{- with . }}
envFrom:
  - secretRef:
      name: {{ . }}
{{- end }}
{{- end -}}

{{- define "switchyard.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
