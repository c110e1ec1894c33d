{{/* The name prefix of every object. */}}
{{- define "flowlens.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "flowlens.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: (list $ "agent"). */}}
{{- define "flowlens.selectorLabels" -}}
{{- $ := index . 0 -}}
app.kubernetes.io/name: {{ $.Chart.Name }}
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* The image of one component: (list $ "agent"). */}}
{{- define "flowlens.image" -}}
{{- $ := index . 0 -}}
{{- $name := index $.Values.image (index . 1) -}}
{{- $tag := $.Values.image.tag | default $.Chart.AppVersion -}}
{{- if $.Values.image.registry -}}
{{- printf "%s/%s:%s" (trimSuffix "/" $.Values.image.registry) $name $tag -}}
{{- else -}}
{{- printf "%s:%s" $name $tag -}}
{{- end -}}
{{- end -}}

{{- define "flowlens.aggregatorService" -}}
{{- printf "%s-aggregator" (include "flowlens.fullname" .) -}}
{{- end -}}

{{- define "flowlens.clickhouseService" -}}
{{- printf "%s-clickhouse" (include "flowlens.fullname" .) -}}
{{- end -}}

{{/*
The prefix of the environment variables Kubernetes sets for a Service in
every pod of its namespace (<NAME>_SERVICE_HOST, <NAME>_SERVICE_PORT_<PORT>):
the Service name upper-cased with dashes as underscores.
*/}}
{{- define "flowlens.serviceEnv" -}}
{{- . | upper | replace "-" "_" -}}
{{- end -}}

{{/*
host:port the agents send to. Without cluster DNS (hostNetwork pods use the
node's resolver) a name would not resolve, so it is the Service's address
from the variables Kubernetes sets, expanded by the kubelet in the
container's args. Brackets keep an IPv6 ClusterIP a valid host:port.
*/}}
{{- define "flowlens.collector" -}}
{{- if .Values.aggregator.address -}}
{{- .Values.aggregator.address -}}
{{- else if .Values.aggregator.enabled -}}
{{- $env := include "flowlens.serviceEnv" (include "flowlens.aggregatorService" .) -}}
{{- printf "[$(%s_SERVICE_HOST)]:$(%s_SERVICE_PORT_IPFIX)" $env $env -}}
{{- else -}}
{{- fail "aggregator.address is required when aggregator.enabled is false" -}}
{{- end -}}
{{- end -}}

{{- define "flowlens.tlsServerName" -}}
{{- .Values.tls.serverName | default (printf "%s.%s.svc" (include "flowlens.aggregatorService" .) .Release.Namespace) -}}
{{- end -}}

{{/* Where the containers find their Secrets' files. */}}
{{- define "flowlens.tlsDir" -}}/etc/flowlens/tls{{- end -}}

{{/*
The agent's configuration: agent.config with the keys the chart owns set
over it (values.yaml lists them).
*/}}
{{- define "flowlens.agentConfig" -}}
{{- $cfg := deepCopy (.Values.agent.config | default dict) -}}
{{- $k8s := get $cfg "kubernetes" | default dict -}}
{{- $_ := set $k8s "enabled" true -}}
{{- $_ := set $cfg "kubernetes" $k8s -}}
{{- if .Values.agent.setConntrackSysctls -}}
{{- $ct := get $cfg "conntrack" | default dict -}}
{{- $_ := set $ct "enableAccounting" false -}}
{{- $_ := set $cfg "conntrack" $ct -}}
{{- end -}}
{{- $export := get $cfg "export" | default dict -}}
{{- if .Values.tls.enabled -}}
{{- $tls := dict "caFile" (printf "%s/ca.crt" (include "flowlens.tlsDir" .)) "serverName" (include "flowlens.tlsServerName" .) -}}
{{- if .Values.tls.mutual -}}
{{- $_ := set $tls "certFile" (printf "%s/tls.crt" (include "flowlens.tlsDir" .)) -}}
{{- $_ := set $tls "keyFile" (printf "%s/tls.key" (include "flowlens.tlsDir" .)) -}}
{{- end -}}
{{- $_ := set $export "transport" "tls" -}}
{{- $_ := set $export "tls" $tls -}}
{{- else -}}
{{- $_ := set $export "transport" "tcp" -}}
{{- end -}}
{{- $_ := set $cfg "export" $export -}}
{{- if .Values.l7.enabled -}}
{{- $l7 := get $cfg "l7" | default dict -}}
{{- $eve := get $l7 "eve" | default dict -}}
{{- $_ := set $eve "source" "unix_stream" -}}
{{- $_ := set $eve "path" (printf "%s/eve.sock" .Values.l7.socketDir) -}}
{{- $_ := set $l7 "eve" $eve -}}
{{- $_ := set $cfg "l7" $l7 -}}
{{- /* The agent copies opted-in pods' traffic to the veth pair Suricata reads. */ -}}
{{- $mirror := get $cfg "mirror" | default dict -}}
{{- $_ := set $mirror "enabled" true -}}
{{- $_ := set $mirror "mechanism" .Values.l7.mirror.mechanism -}}
{{- $_ := set $mirror "captureInterface" .Values.l7.mirror.captureInterface -}}
{{- $_ := set $mirror "peerInterface" .Values.l7.interface -}}
{{- $_ := set $cfg "mirror" $mirror -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/*
The aggregator's configuration: aggregator.config with listen, tls,
metricsAddress and (without ClickHouse and without a sink of the user's)
the JSON lines sink set over it.
*/}}
{{- define "flowlens.aggregatorConfig" -}}
{{- $cfg := deepCopy (.Values.aggregator.config | default dict) -}}
{{- $scheme := ternary "tls" "tcp" .Values.tls.enabled -}}
{{- $_ := set $cfg "listen" (list (printf "%s://0.0.0.0:%d" $scheme (int .Values.aggregator.service.port))) -}}
{{- $_ := set $cfg "metricsAddress" (printf "0.0.0.0:%d" (int .Values.aggregator.metricsPort)) -}}
{{- if .Values.tls.enabled -}}
{{- $tls := dict "certFile" (printf "%s/tls.crt" (include "flowlens.tlsDir" .)) "keyFile" (printf "%s/tls.key" (include "flowlens.tlsDir" .)) -}}
{{- if .Values.tls.mutual -}}
{{- $_ := set $tls "clientCAFile" (printf "%s/ca.crt" (include "flowlens.tlsDir" .)) -}}
{{- end -}}
{{- $_ := set $cfg "tls" $tls -}}
{{- end -}}
{{- $sinks := get $cfg "sinks" | default dict -}}
{{- $userSink := false -}}
{{- range $name, $s := $sinks -}}
{{- if and (kindIs "map" $s) (get $s "enabled") -}}{{- $userSink = true -}}{{- end -}}
{{- end -}}
{{- if .Values.clickhouse.enabled -}}
{{- $ch := get $sinks "clickhouse" | default dict -}}
{{- $_ := set $ch "enabled" true -}}
{{- $_ := set $sinks "clickhouse" $ch -}}
{{- else if not $userSink -}}
{{- $_ := set $sinks "jsonl" (dict "enabled" true "path" "-") -}}
{{- end -}}
{{- $_ := set $cfg "sinks" $sinks -}}
{{- toYaml $cfg -}}
{{- end -}}
