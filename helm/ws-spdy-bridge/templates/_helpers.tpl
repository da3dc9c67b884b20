{{/* Chart name, truncated to the 63 characters of a label value. */}}
{{- define "ws-spdy-bridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Name of every object: the release name, with the chart name unless it already has it. */}}
{{- define "ws-spdy-bridge.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ws-spdy-bridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ws-spdy-bridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ws-spdy-bridge.labels" -}}
{{ include "ws-spdy-bridge.selectorLabels" . }}
app.kubernetes.io/component: {{ include "ws-spdy-bridge.component" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "ws-spdy-bridge.component" -}}
{{- if eq .Values.mode "cri" -}}cri-interception{{- else -}}{{ .Values.mode }}{{- end -}}
{{- end -}}

{{- define "ws-spdy-bridge.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Whether the streaming listener serves TLS: never in cri mode (loopback, kubelet). */}}
{{- define "ws-spdy-bridge.tls" -}}
{{- if and .Values.tls.enabled (ne .Values.mode "cri") -}}true{{- end -}}
{{- end -}}

{{/* The kubelet's endpoint in cri mode. */}}
{{- define "ws-spdy-bridge.criEndpoint" -}}
{{- printf "unix://%s/%s" (trimSuffix "/" .Values.cri.socketDir) .Values.cri.socketName -}}
{{- end -}}

{{/*
The bridge's configuration file: what the mode implies, with .Values.config merged over it.
*/}}
{{- define "ws-spdy-bridge.config" -}}
{{- $v := .Values -}}
{{- $c := dict "metrics" (dict "listen" (printf "0.0.0.0:%d" (int $v.ports.metrics))) -}}
{{- if eq $v.mode "cri" -}}
{{- $_ := set $c "listen" (printf "127.0.0.1:%d" (int $v.ports.streaming)) -}}
{{- $_ := set $c "cri" (dict
      "listen" (printf "unix:%s/%s" (trimSuffix "/" $v.cri.socketDir) $v.cri.socketName)
      "runtime_endpoint" (printf "unix:%s/%s" (trimSuffix "/" $v.cri.runtimeSocketDir) $v.cri.runtimeSocketName)
      "advertise_url" (printf "http://127.0.0.1:%d" (int $v.ports.streaming))) -}}
{{- else -}}
{{- $_ := set $c "listen" (printf "0.0.0.0:%d" (int $v.ports.streaming)) -}}
{{- if eq $v.mode "standalone" -}}
{{/* Replaced in each pod by WS_SPDY_BRIDGE_UPSTREAM__URL (the node's IP). */}}
{{- $_ := set $c "upstream" (dict "url" (printf "%s://127.0.0.1:%d" $v.standalone.runtimeScheme (int $v.standalone.runtimePort))) -}}
{{- else -}}
{{- $_ := set $c "upstream" (dict "url" $v.sidecar.runtimeUrl) -}}
{{- end -}}
{{- if include "ws-spdy-bridge.tls" . -}}
{{- $tls := dict "cert_file" "/etc/ws-spdy-bridge/tls/tls.crt" "key_file" "/etc/ws-spdy-bridge/tls/tls.key" -}}
{{- if $v.tls.requireClientCert -}}
{{- $_ := set $tls "client_ca_file" "/etc/ws-spdy-bridge/tls/ca.crt" -}}
{{- end -}}
{{- $_ := set $c "tls" $tls -}}
{{- end -}}
{{- end -}}
{{- toYaml (mustMergeOverwrite $c (deepCopy $v.config)) -}}
{{- end -}}

{{/* The bridge container, shared by the DaemonSet and the Deployment. */}}
{{- define "ws-spdy-bridge.container" -}}
- name: ws-spdy-bridge
  image: {{ include "ws-spdy-bridge.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args: ["serve", "--config", "/etc/ws-spdy-bridge/config/config.yaml"]
  ports:
    - name: streaming
      containerPort: {{ .Values.ports.streaming }}
      protocol: TCP
    - name: metrics
      containerPort: {{ .Values.ports.metrics }}
      protocol: TCP
  {{- if or (eq .Values.mode "standalone") .Values.extraEnv }}
  env:
    {{- if eq .Values.mode "standalone" }}
    - name: HOST_IP
      valueFrom:
        fieldRef:
          fieldPath: status.hostIP
    # This node's runtime streaming server (an IPv4 node address).
    - name: WS_SPDY_BRIDGE_UPSTREAM__URL
      value: {{ printf "%s://$(HOST_IP):%d" .Values.standalone.runtimeScheme (int .Values.standalone.runtimePort) | quote }}
    {{- end }}
    {{- with .Values.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
  # /healthz: the process serves. /readyz: the streaming listener is up and the runtime
  # answers a connect (bounded at 1 s inside the bridge).
  livenessProbe:
    httpGet:
      path: /healthz
      port: metrics
    periodSeconds: 10
    timeoutSeconds: 2
    failureThreshold: 6
  readinessProbe:
    httpGet:
      path: /readyz
      port: metrics
    periodSeconds: 5
    timeoutSeconds: 3
    failureThreshold: 3
  resources:
    {{- toYaml .Values.resources | nindent 4 }}
  securityContext:
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities:
      drop: ["ALL"]
  volumeMounts:
    - name: config
      mountPath: /etc/ws-spdy-bridge/config
      readOnly: true
    {{- if include "ws-spdy-bridge.tls" . }}
    - name: tls
      mountPath: /etc/ws-spdy-bridge/tls
      readOnly: true
    {{- end }}
    {{- if eq .Values.mode "cri" }}
    - name: runtime-socket
      mountPath: {{ .Values.cri.runtimeSocketDir }}
      readOnly: true
    - name: bridge-socket
      mountPath: {{ .Values.cri.socketDir }}
    {{- end }}
{{- end -}}

{{/* Volumes of the bridge container. */}}
{{- define "ws-spdy-bridge.volumes" -}}
- name: config
  configMap:
    name: {{ include "ws-spdy-bridge.fullname" . }}-config
{{- if include "ws-spdy-bridge.tls" . }}
- name: tls
  secret:
    secretName: {{ .Values.tls.secretName }}
{{- end }}
{{- if eq .Values.mode "cri" }}
- name: runtime-socket
  hostPath:
    path: {{ .Values.cri.runtimeSocketDir }}
    type: Directory
- name: bridge-socket
  hostPath:
    path: {{ .Values.cri.socketDir }}
    type: DirectoryOrCreate
{{- end }}
{{- end -}}

{{/* Pod security context: restricted, except for the CRI shape's uid 0 (file ownership only). */}}
{{- define "ws-spdy-bridge.podSecurityContext" -}}
{{- if eq .Values.mode "cri" -}}
runAsNonRoot: false
runAsUser: 0
runAsGroup: 0
seccompProfile:
  type: RuntimeDefault
{{- with .Values.cri.seLinuxType }}
seLinuxOptions:
  type: {{ . }}
{{- end }}
{{- else -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}
{{- end -}}

{{/* Pod template metadata: labels, and a checksum that rolls the pods when the config changes. */}}
{{- define "ws-spdy-bridge.podMetadata" -}}
labels:
  {{- include "ws-spdy-bridge.selectorLabels" . | nindent 2 }}
  app.kubernetes.io/component: {{ include "ws-spdy-bridge.component" . }}
  {{- with .Values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
annotations:
  checksum/config: {{ include "ws-spdy-bridge.config" . | sha256sum }}
  {{- with .Values.podAnnotations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}
