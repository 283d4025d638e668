{{- /*
  Certificate template of core's revoker provisioner (written by prov-pki init).
  Core holds this provisioner's key only to revoke device certificates at the
  CA when an admin revokes a device; it signs nothing.
*/ -}}
{{- fail "the core revoker provisioner revokes certificates; it signs none" -}}
