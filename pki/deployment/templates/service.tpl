{{- /*
  Certificate template of the admin provisioner (written by prov-pki init).
  It signs the deployment's service identities only: admin, proxy, core and
  signer, never a device and never another trust domain. The token names the
  identity URI spiffe://<trust-domain>/<role>/<name> and, for core and proxy,
  host names; the subject CN is <role>/<name>.
  Role console is a proxy's console certificate: the token names
  spiffe://<trust-domain>/console/<proxy> for these checks, but the
  certificate carries no URI SAN, only the proxy's host names. Browsers
  refuse any leaf with a URI SAN under the intermediate's critical URI name
  constraint (Chromium implements none), so the console page gets this
  one; without a URI it is no identity (pki.IdentityOf refuses it). crlURL (template data) is the
  CA's CRL, named as the CRL names itself (see device.tpl).
*/ -}}
{{- $prefix := printf "spiffe://%s/" .trustDomain -}}
{{- $uris := list -}}{{- $dns := list -}}{{- $ips := list -}}
{{- range .SANs -}}
  {{- if eq .Type "uri" -}}{{- $uris = append $uris .Value -}}
  {{- else if eq .Type "dns" -}}{{- $dns = append $dns .Value -}}
  {{- else if eq .Type "ip" -}}{{- $ips = append $ips .Value -}}
  {{- else -}}{{- fail (printf "SAN %q of type %s is not allowed" .Value .Type) -}}
  {{- end -}}
{{- end -}}
{{- if ne (len $uris) 1 -}}
  {{- fail "the token must name exactly one identity URI" -}}
{{- end -}}
{{- $uri := first $uris -}}
{{- if not (hasPrefix $prefix $uri) -}}
  {{- fail (printf "identity %q is not in trust domain %s" $uri .trustDomain) -}}
{{- end -}}
{{- $parts := splitList "/" (trimPrefix $prefix $uri) -}}
{{- if ne (len $parts) 2 -}}
  {{- fail (printf "identity %q is not spiffe://<trust-domain>/<role>/<name>" $uri) -}}
{{- end -}}
{{- $role := index $parts 0 -}}
{{- $name := index $parts 1 -}}
{{- if not (has $role (list "admin" "proxy" "core" "signer" "console")) -}}
  {{- fail (printf "role %q cannot be issued by the admin provisioner" $role) -}}
{{- end -}}
{{- if not (regexMatch "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$" $name) -}}
  {{- fail (printf "name %q: want 1-63 of a-z, 0-9 and '-'" $name) -}}
{{- end -}}
{{- if ne .Subject.CommonName (printf "%s/%s" $role $name) -}}
  {{- fail (printf "common name %q must be %s/%s" .Subject.CommonName $role $name) -}}
{{- end -}}
{{- if and (or (eq $role "admin") (eq $role "signer")) (or $dns $ips) -}}
  {{- fail (printf "a %s certificate carries no host names" $role) -}}
{{- end -}}
{{- if and (eq $role "console") (not (or $dns $ips)) -}}
  {{- fail "a console certificate names the proxy's hosts" -}}
{{- end -}}
{
  "subject": {"commonName": {{ toJson .Subject.CommonName }}},
  {{- if ne $role "console" }}
  "uris": {{ toJson (list $uri) }},
  {{- end }}
  {{- if $dns }}
  "dnsNames": {{ toJson $dns }},
  {{- end }}
  {{- if $ips }}
  "ipAddresses": {{ toJson $ips }},
  {{- end }}
  "keyUsage": ["digitalSignature"],
  {{- if eq $role "console" }}
  {{- /* clientAuth only for step-ca's renewal (see signer); with no URI
       SAN it is no identity any relying party accepts */}}
  "extKeyUsage": ["serverAuth", "clientAuth"],
  {{- else if eq $role "signer" }}
  {{- /* clientAuth as well: step-ca renews a certificate only over mTLS
       (or with a token signed by it), and both need it */}}
  "extKeyUsage": ["codeSigning", "clientAuth"],
  {{- else if eq $role "admin" }}
  "extKeyUsage": ["clientAuth"],
  {{- else }}
  "extKeyUsage": ["serverAuth", "clientAuth"],
  {{- end }}
  {{- if .crlURL }}
  "crlDistributionPoints": {{ toJson (list .crlURL) }},
  {{- end }}
  "basicConstraints": {"isCA": false}
}
