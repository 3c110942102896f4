{{- define "wasm-broker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "wasm-broker.fullname" -}}
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

{{- define "wasm-broker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wasm-broker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "wasm-broker.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "wasm-broker.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "wasm-broker.secretName" -}}
{{- default (include "wasm-broker.fullname" .) .Values.existingSecret }}
{{- end }}

{{- define "wasm-broker.scheme" -}}
{{- if .Values.server.tls.enabled }}https{{ else }}http{{ end }}
{{- end }}

{{/* Environment variable carrying a connection's secret part, e.g. URL of "rabbitmq-management" -> WASM_BROKER_CONNECTION_RABBITMQ_MANAGEMENT_URL. */}}
{{- define "wasm-broker.connectionEnv" -}}
{{- printf "WASM_BROKER_CONNECTION_%s_%s" (.name | upper | replace "-" "_" | replace "." "_") .part }}
{{- end }}

{{/* A scalar or a list of scalars as TOML. Values arrive from YAML as float64, so whole numbers are printed as integers (broker.toml's limits are unsigned integers). */}}
{{- define "wasm-broker.tomlValue" -}}
{{- $value := . }}
{{- if kindIs "string" $value }}{{ toJson $value }}
{{- else if kindIs "bool" $value }}{{ $value }}
{{- else if or (kindIs "float64" $value) (kindIs "float32" $value) }}{{ if eq (floor $value) $value }}{{ int64 $value }}{{ else }}{{ $value }}{{ end }}
{{- else if or (kindIs "int" $value) (kindIs "int64" $value) }}{{ $value }}
{{- else if kindIs "slice" $value }}[{{ range $index, $item := $value }}{{ if $index }}, {{ end }}{{ include "wasm-broker.tomlValue" $item }}{{ end }}]
{{- else if kindIs "map" $value }}{ {{ range $index, $key := keys $value | sortAlpha }}{{ if $index }}, {{ end }}{{ $key | quote }} = {{ include "wasm-broker.tomlValue" (get $value $key) }}{{ end }} }
{{- else }}{{ fail (printf "cannot render %v (%s) as a broker.toml value: use strings, numbers, booleans, lists or tables of them" $value (kindOf $value)) }}
{{- end }}
{{- end }}

{{/* Refuses values that would deploy a broker that cannot work. */}}
{{- define "wasm-broker.validate" -}}
{{- $backend := .Values.state.backend }}
{{- if not (has $backend (list "sqlite" "postgres")) }}
{{- fail (printf "state.backend must be sqlite or postgres, not %q" $backend) }}
{{- end }}
{{- if and (eq $backend "sqlite") (gt (int .Values.replicaCount) 1) }}
{{- fail "replicaCount > 1 needs state.backend=postgres: SQLite state lives on one pod's volume and cannot be shared between replicas" }}
{{- end }}
{{- if not .Values.existingSecret }}
{{- if not .Values.auth.password }}
{{- fail "auth.password is required (or existingSecret): the platform authenticates every request with it" }}
{{- end }}
{{- if not .Values.encryption.key }}
{{- fail "encryption.key is required (or existingSecret): `wasm-broker generate-key` prints one; keep a copy, losing it loses the stored credentials" }}
{{- end }}
{{- if and (eq $backend "postgres") (not .Values.state.postgres.url) }}
{{- fail "state.postgres.url is required with state.backend=postgres (or existingSecret with a state-url key)" }}
{{- end }}
{{- range $name, $connection := .Values.connections }}
{{- if not $connection.url }}
{{- fail (printf "connections.%s.url is required" $name) }}
{{- end }}
{{- end }}
{{- end }}
{{- if not .Values.auth.username }}
{{- fail "auth.username is required" }}
{{- end }}
{{- range $name, $connection := .Values.connections }}
{{- if not (has $connection.kind (list "mysql" "postgres" "redis" "http" "tcp")) }}
{{- fail (printf "connections.%s.kind must be mysql, postgres, redis, http or tcp, not %q" $name $connection.kind) }}
{{- end }}
{{- end }}
{{- range $plugin, $settings := .Values.plugins.settings }}
{{- range $alias, $grant := $settings.connections }}
{{- $target := $grant }}
{{- if kindIs "map" $grant }}{{ $target = toString (get $grant "connection") }}{{ end }}
{{- if not (hasKey $.Values.connections $target) }}
{{- fail (printf "plugins.settings.%s grants connection %s -> %s, but connections.%s is not defined" $plugin $alias $target $target) }}
{{- end }}
{{- end }}
{{- end }}
{{- $source := .Values.plugins.source }}
{{- if not (has $source (list "image" "initContainer" "volume")) }}
{{- fail (printf "plugins.source must be image, initContainer or volume, not %q" $source) }}
{{- end }}
{{- if and (eq $source "initContainer") (not .Values.plugins.initContainer.image.repository) }}
{{- fail "plugins.initContainer.image.repository is required with plugins.source=initContainer" }}
{{- end }}
{{- if and (eq $source "volume") (not .Values.plugins.volume) }}
{{- fail "plugins.volume (a volume source) is required with plugins.source=volume" }}
{{- end }}
{{- if and .Values.server.tls.enabled (not .Values.server.tls.secretName) }}
{{- fail "server.tls.secretName (a kubernetes.io/tls Secret) is required with server.tls.enabled" }}
{{- end }}
{{- end }}
