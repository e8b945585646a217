{{- define "retina-exporter.labels" -}}
app.kubernetes.io/name: retina-exporter
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 }}
{{- end -}}

{{- define "retina-exporter.agentSelector" -}}
app.kubernetes.io/name: retina-exporter
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end -}}

{{- define "retina-exporter.operatorSelector" -}}
app.kubernetes.io/name: retina-exporter
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "retina-exporter.operatorServerName" -}}
{{- .Values.tls.serverName | default (printf "%s-operator.%s.svc" .Release.Name .Release.Namespace) -}}
{{- end -}}

{{/* The agent's config.yaml: agent.config with what the chart knows filled in. */}}
{{- define "retina-exporter.agentConfig" -}}
{{- $cfg := deepCopy .Values.agent.config -}}
{{- $enr := get $cfg "enrichment" | default dict -}}
{{- if .Values.operator.enabled -}}
{{- $_ := set $enr "source" "operator" -}}
{{- $_ := set $enr "operatorAddress" (printf "%s-operator.%s.svc:%d" .Release.Name .Release.Namespace (int .Values.operator.grpcPort)) -}}
{{- if .Values.tls.enabled -}}
{{- $_ := set $enr "operatorTLS" true -}}
{{- $_ := set $enr "operatorCAFile" "/etc/retina/tls/ca.crt" -}}
{{- $_ := set $enr "operatorServerName" (include "retina-exporter.operatorServerName" .) -}}
{{- if .Values.tls.clientAuth -}}
{{- $_ := set $enr "operatorCertFile" "/etc/retina/tls/tls.crt" -}}
{{- $_ := set $enr "operatorKeyFile" "/etc/retina/tls/tls.key" -}}
{{- end -}}
{{- end -}}
{{- else if eq (get $enr "source" | default "operator") "operator" -}}
{{- $_ := set $enr "source" "kubernetes" -}}
{{- end -}}
{{- $_ := set $cfg "enrichment" $enr -}}
{{- $h := deepCopy (get $cfg "hubble" | default dict) -}}
{{- $_ := set $h "enabled" .Values.hubble.enabled -}}
{{- if .Values.hubble.enabled -}}
{{- $_ := set $h "listenAddress" (printf ":%d" (int .Values.hubble.listenPort)) -}}
{{- $_ := set $h "socketPath" .Values.hubble.socketPath -}}
{{- $_ := set $h "eventBufferCapacity" (int .Values.hubble.eventBufferCapacity) -}}
{{- $tls := dict -}}
{{- if .Values.hubble.tls.enabled -}}
{{- $dir := include "retina-exporter.hubbleTLSDir" . -}}
{{- $_ := set $tls "certFile" (printf "%s/tls.crt" $dir) -}}
{{- $_ := set $tls "keyFile" (printf "%s/tls.key" $dir) -}}
{{- if .Values.hubble.tls.mtls -}}
{{- $_ := set $tls "clientCAFiles" (list (printf "%s/ca.crt" $dir)) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $h "tls" $tls -}}
{{- end -}}
{{- $_ := set $cfg "hubble" $h -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* Hubble: object names as in Cilium's chart (Relay's and the hubble CLI's defaults), and the agent's paths. */}}
{{- define "retina-exporter.hubblePeerName" -}}
{{- .Values.hubble.peerService.name | default "hubble-peer" | trunc 63 -}}
{{- end -}}

{{- define "retina-exporter.hubblePeerPort" -}}
{{- ternary 443 80 .Values.hubble.tls.enabled -}}
{{- end -}}

{{/* Relay's --peer-service: hubble-peer.<ns>.svc.<domain>.:443 (the trailing dot: no search-path lookups). */}}
{{- define "retina-exporter.hubblePeerAddress" -}}
{{- printf "%s.%s.svc.%s.:%s" (include "retina-exporter.hubblePeerName" .) .Release.Namespace .Values.hubble.peerService.clusterDomain (include "retina-exporter.hubblePeerPort" .) -}}
{{- end -}}

{{- define "retina-exporter.hubbleRelayName" -}}hubble-relay{{- end -}}

{{- define "retina-exporter.hubbleUIName" -}}hubble-ui{{- end -}}

{{- define "retina-exporter.hubbleTLSDir" -}}/var/lib/retina-exporter/hubble-tls{{- end -}}

{{/* The agent's server certificate name (Cilium's default cluster name is "default"). */}}
{{- define "retina-exporter.hubbleServerName" -}}*.default.hubble-grpc.cilium.io{{- end -}}

{{- define "retina-exporter.hubbleRelaySelector" -}}
app.kubernetes.io/name: retina-exporter
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: hubble-relay
{{- end -}}

{{- define "retina-exporter.hubbleUISelector" -}}
app.kubernetes.io/name: retina-exporter
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: hubble-ui
{{- end -}}

{{/* Hubble Relay's config.yaml (Cilium's keys): the peer Service, TLS to the agents, plaintext for its clients. */}}
{{- define "retina-exporter.hubbleRelayConfig" -}}
cluster-name: default
peer-service: {{ include "retina-exporter.hubblePeerAddress" . | quote }}
listen-address: {{ printf ":%d" (int .Values.hubble.relay.listenPort) | quote }}
gops: false
disable-server-tls: true
{{- if .Values.hubble.tls.enabled }}
tls-hubble-client-cert-file: /var/lib/hubble-relay/tls/client.crt
tls-hubble-client-key-file: /var/lib/hubble-relay/tls/client.key
tls-hubble-server-ca-files: /var/lib/hubble-relay/tls/hubble-server-ca.crt
{{- else }}
disable-client-tls: true
{{- end }}
{{- end -}}

{{/* Hubble UI's nginx server: the app from /app, /api to the backend in the same pod. */}}
{{- define "retina-exporter.hubbleUINginx" -}}
server {
    listen 8081;
    server_name localhost;
    root /app;
    index index.html;
    client_max_body_size 1G;

    location /api {
        proxy_http_version 1.1;
        proxy_pass_request_headers on;
        proxy_pass http://127.0.0.1:8090;
    }

    location / {
        try_files $uri $uri/ /index.html;
    }
}
{{- end -}}
