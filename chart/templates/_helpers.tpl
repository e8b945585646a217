{{- define "retina-exporter.labels" -}}
app.kubernetes.io/name: retina-exporter
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}
