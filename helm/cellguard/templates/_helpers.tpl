{{/*
Names, labels and the small computations several templates share.
*/}}

{{- define "cellguard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cellguard.fullname" -}}
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

{{/* A name derived from the full name: "cellguard.child" (list $ "suffix"). */}}
{{- define "cellguard.child" -}}
{{- $root := index . 0 }}
{{- printf "%s-%s" (include "cellguard.fullname" $root | trunc (int (sub 62 (len (index . 1))))  | trimSuffix "-") (index . 1) }}
{{- end }}

{{- define "cellguard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cellguard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cellguard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "cellguard.labels" -}}
helm.sh/chart: {{ include "cellguard.chart" . }}
{{ include "cellguard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: cellguard
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of one component: "cellguard.componentLabels" (list $ "operator"). */}}
{{- define "cellguard.componentLabels" -}}
{{ include "cellguard.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "cellguard.componentSelectorLabels" -}}
{{ include "cellguard.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "cellguard.operatorServiceAccountName" -}}
{{- default (include "cellguard.child" (list . "operator")) .Values.operator.serviceAccount.name }}
{{- end }}

{{- define "cellguard.agentServiceAccountName" -}}
{{- default (include "cellguard.child" (list . "agent")) .Values.agent.serviceAccount.name }}
{{- end }}

{{- define "cellguard.webhookServiceName" -}}
{{- include "cellguard.child" (list . "webhook") }}
{{- end }}

{{- define "cellguard.tlsSecretName" -}}
{{- if eq .Values.webhook.certificate.source "existingSecret" }}
{{- .Values.webhook.certificate.existingSecret }}
{{- else }}
{{- include "cellguard.child" (list . "webhook-tls") }}
{{- end }}
{{- end }}

{{- define "cellguard.certificateName" -}}
{{- include "cellguard.child" (list . "webhook") }}
{{- end }}

{{- define "cellguard.image" -}}
{{- $image := index . 0 }}
{{- $defaultTag := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default $defaultTag $image.tag) }}
{{- end }}
{{- end }}

{{- define "cellguard.operatorImage" -}}
{{- include "cellguard.image" (list .Values.image .Chart.AppVersion) }}
{{- end }}

{{- define "cellguard.kubectlImage" -}}
{{- include "cellguard.image" (list .Values.kubectl.image "latest") }}
{{- end }}

{{/*
Namespaces the webhooks never see: the three system namespaces, the release namespace (the
webhook must never block cellguard itself) and webhook.exemptNamespaces; sorted, unique, as
cellguard.resources.webhook builds them. Rendered as a JSON list.
*/}}
{{- define "cellguard.exemptNamespaces" -}}
{{- $all := concat (list "kube-system" "kube-public" "kube-node-lease" .Release.Namespace) .Values.webhook.exemptNamespaces }}
{{- $all | uniq | sortAlpha | toJson }}
{{- end }}

{{/* True (non-empty) when the chart renders certificate material for the webhook. */}}
{{- define "cellguard.hasCertificate" -}}
{{- if ne .Values.webhook.certificate.source "none" }}true{{ end }}
{{- end }}

{{/*
The hosts the webhook's serving certificate must name, as a dict with "dns" and "ips" lists:
the webhook Service's DNS names, the URL's host in URL mode, and the extra names from values.
*/}}
{{- define "cellguard.certificateHosts" -}}
{{- $svc := include "cellguard.webhookServiceName" . }}
{{- $ns := .Release.Namespace }}
{{- $dns := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns .Values.clusterDomain) }}
{{- $ips := list }}
{{- if and (eq .Values.webhook.mode "url") .Values.webhook.url }}
{{- $host := (urlParse .Values.webhook.url).hostname }}
{{- if regexMatch "^[0-9.]+$|:" $host }}
{{- $ips = append $ips $host }}
{{- else }}
{{- $dns = append $dns $host }}
{{- end }}
{{- end }}
{{- $dns = concat $dns .Values.webhook.certificate.extraDnsNames | uniq }}
{{- $ips = concat $ips .Values.webhook.certificate.extraIpAddresses | uniq }}
{{- dict "dns" $dns "ips" $ips | toJson }}
{{- end }}

{{/*
The generated webhook certificate (source: generate), computed once per render and shared by
the Secret and the ValidatingWebhookConfiguration: {"crt", "key", "ca"} base64-encoded.
An existing Secret of this release is reused as long as it was made for the same hosts, so
upgrades never rotate the certificate (and `helm template` output is not stable: no lookup).
*/}}
{{- define "cellguard.generatedCertificate" -}}
{{- if not (hasKey .Release "cellguardGeneratedCertificate") }}
{{- $hosts := include "cellguard.certificateHosts" . | fromJson }}
{{- $hostsKey := concat $hosts.dns $hosts.ips | join "," | sha256sum | trunc 16 }}
{{- $name := include "cellguard.tlsSecretName" . }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace $name }}
{{- $data := dict }}
{{- if and $existing $existing.data }}
{{- $annotations := $existing.metadata.annotations | default dict }}
{{- if and (index $existing.data "tls.crt") (index $existing.data "tls.key") (index $existing.data "ca.crt") (eq (index $annotations "cellguard.io/certificate-hosts" | default "") $hostsKey) }}
{{- $data = dict "crt" (index $existing.data "tls.crt") "key" (index $existing.data "tls.key") "ca" (index $existing.data "ca.crt") }}
{{- end }}
{{- end }}
{{- if not $data }}
{{- $days := int .Values.webhook.certificate.validityDays }}
{{- $ca := genCA (printf "%s-webhook-ca" (include "cellguard.fullname" .)) $days }}
{{- $cert := genSignedCert (first $hosts.dns) $hosts.ips $hosts.dns $days $ca }}
{{- $data = dict "crt" ($cert.Cert | b64enc) "key" ($cert.Key | b64enc) "ca" ($ca.Cert | b64enc) }}
{{- end }}
{{- $_ := set $data "hostsKey" $hostsKey }}
{{- $_ := set .Release "cellguardGeneratedCertificate" $data }}
{{- end }}
{{- index .Release "cellguardGeneratedCertificate" | toJson }}
{{- end }}

{{/* The caBundle of the webhook configuration, or nothing (cert-manager injects it). */}}
{{- define "cellguard.caBundle" -}}
{{- if .Values.webhook.caBundle }}
{{- .Values.webhook.caBundle }}
{{- else if eq .Values.webhook.certificate.source "generate" }}
{{- (include "cellguard.generatedCertificate" . | fromJson).ca }}
{{- end }}
{{- end }}

{{/* The default ThreadBudgetPolicy, as the hook Job applies it. */}}
{{- define "cellguard.defaultPolicy" -}}
apiVersion: cellguard.io/v1alpha1
kind: ThreadBudgetPolicy
metadata:
  name: default
  labels:
    {{- include "cellguard.componentLabels" (list . "policy") | nindent 4 }}
  annotations:
    # Applied by the release's hook, never deleted by it: cells keep their policy.
    cellguard.io/applied-by: {{ printf "helm release %s/%s" .Release.Namespace .Release.Name | quote }}
spec:
  {{- toYaml .Values.defaultPolicy.spec | nindent 2 }}
{{- end }}

{{/* Pod-level and container-level security for the kubectl hook and test pods. */}}
{{- define "cellguard.kubectlPodSecurity" -}}
runAsNonRoot: true
runAsUser: 65534
runAsGroup: 65534
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "cellguard.kubectlContainerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{/* The operator's rules on namespaced objects (a ClusterRole's, or a Role's per namespace). */}}
{{- define "cellguard.operatorNamespacedRules" -}}
# The cells: read and watch; the operator writes their status only.
- apiGroups: ["cellguard.io"]
  resources: ["streamcells"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["cellguard.io"]
  resources: ["streamcells/status"]
  verbs: ["get", "patch", "update"]
# The cells' pods: where each cell's pods run (read only).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# Per cell a Deployment, a headless Service and a PodDisruptionBudget (server-side apply).
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# Events on cells (refusals, backstop decisions).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
