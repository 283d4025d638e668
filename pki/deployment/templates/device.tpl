{{- /*
  Certificate template of every proxy's JWK provisioner (written by prov-pki init).
  A proxy's provisioner may sign device identities only, even if its key is stolen:
  the token subject must be a 10-hex-digit serial, the token must name exactly the
  device's identity URI as its only SAN and must be bound to the CSR (cnf claim);
  the certificate's names come from this template alone, never from the CSR.
  crlURL (template data) is the CA's CRL, named as the CRL names itself, so
  OpenSSL-based relying parties (Mosquitto's crlfile) take the CRL as covering it.
*/ -}}
{{- $serial := .Subject.CommonName -}}
{{- if not (regexMatch "^[0-9a-f]{10}$" $serial) -}}
  {{- fail (printf "device serial (token subject) %q is not 10 lowercase hex digits" $serial) -}}
{{- end -}}
{{- $uri := printf "spiffe://%s/device/%s" .trustDomain $serial -}}
{{- if ne (len .SANs) 1 -}}
  {{- fail (printf "a device token must name exactly one SAN, %s" $uri) -}}
{{- end -}}
{{- range .SANs -}}
  {{- if or (ne .Type "uri") (ne .Value $uri) -}}
    {{- fail (printf "SAN %q is not the device identity %s" .Value $uri) -}}
  {{- end -}}
{{- end -}}
{{- if not (and .Token .Token.cnf) -}}
  {{- fail "the token is not bound to a CSR (cnf claim missing)" -}}
{{- end -}}
{{- if not (index .Token.cnf "x5rt#S256") -}}
  {{- fail "the token is not bound to a CSR (cnf x5rt#S256 missing)" -}}
{{- end -}}
{
  "subject": {"commonName": {{ toJson $serial }}},
  "uris": {{ toJson (list $uri) }},
  "keyUsage": ["digitalSignature"],
  "extKeyUsage": ["clientAuth"],
  {{- if .crlURL }}
  "crlDistributionPoints": {{ toJson (list .crlURL) }},
  {{- end }}
  "basicConstraints": {"isCA": false}
}
