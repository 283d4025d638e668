{{- /*
  Certificate template of every proxy's JWK provisioner (written by prov-pki init).
  A proxy's provisioner may sign device identities only, even if its key is stolen:
  the token subject must be a 10-hex-digit serial, the token must name exactly the
  device's identity URI as its only SAN and must be bound to the CSR (cnf claim);
  the certificate's names come from this template alone, never from the CSR.
  crlURL (template data) is the CA's CRL, named as the CRL names itself, so
  OpenSSL-based relying parties (Mosquitto's crlfile) take the CRL as covering it.
  A token with a "tpm" claim ({"ekSha256": 64 hex digits}: the proxy verified the
  key resident in that TPM) adds the TPM key policy (pki.TPMKeyPolicyOID) with a
  user notice naming the endorsement key; its DER is built here, the OIDs as
  their DER in base64: 2.25.168877005083990836446111088824927958707 and
  id-qt-unotice 1.3.6.1.5.5.7.2.2 (pki tests check both).
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
{{- $tpmPolicy := "" -}}
{{- if .Token.tpm -}}
  {{- $ek := toString (index .Token.tpm "ekSha256") -}}
  {{- if not (regexMatch "^[0-9a-f]{64}$" $ek) -}}
    {{- fail (printf "tpm.ekSha256 %q is not 64 lowercase hex digits" $ek) -}}
  {{- end -}}
  {{- $notice := asn1Seq (asn1Enc (printf "utf8:TPM-resident key; endorsement key SHA-256 %s" $ek)) -}}
  {{- $tpmPolicy = asn1Seq (asn1Seq "BhRpgf6Mw8y0gMK8r6ikm7zFqMLtMw==" (asn1Seq (asn1Seq "BggrBgEFBQcCAg==" $notice))) -}}
{{- end -}}
{
  "subject": {"commonName": {{ toJson $serial }}},
  "uris": {{ toJson (list $uri) }},
  "keyUsage": ["digitalSignature"],
  "extKeyUsage": ["clientAuth"],
  {{- if .crlURL }}
  "crlDistributionPoints": {{ toJson (list .crlURL) }},
  {{- end }}
  {{- if $tpmPolicy }}
  "extensions": [{"id": "2.5.29.32", "critical": false, "value": {{ toJson $tpmPolicy }}}],
  {{- end }}
  "basicConstraints": {"isCA": false}
}
