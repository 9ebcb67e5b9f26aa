package setup

// DeviceTemplate is the certificate template init gives the "agents"
// device-attest-01 provisioner: upstream's attested leaf template plus the
// permanent identifier (for TPMs the EK URN) as a URI SAN, where TLS and
// RADIUS servers look for it, and the device's inventory collection as the
// subject's organizational unit (data from the deviceAttest plugin's
// in-process ENRICHING webhook). See docs/deviceattest.md.
const DeviceTemplate = `{
{{- $device := dict }}{{ with .Webhooks }}{{ with .deviceAttest }}{{ $device = . }}{{ end }}{{ end }}
{{- if $device.collection }}
	"subject": {"commonName": {{ toJson .Subject.CommonName }}, "organizationalUnit": {{ toJson $device.collection }}},
{{- else }}
	"subject": {{ toJson .Subject }},
{{- end }}
	"sans": [
{{- range $i, $s := .SANs }}{{ if $i }},{{ end }}
		{{ toJson $s }}
{{- if eq $s.Type "permanentIdentifier" }},
		{"type": "uri", "value": {{ toJson $s.Value }}}
{{- end }}
{{- end }}
	],
{{- if typeIs "*rsa.PublicKey" .Insecure.CR.PublicKey }}
	"keyUsage": ["keyEncipherment", "digitalSignature"],
{{- else }}
	"keyUsage": ["digitalSignature"],
{{- end }}
	"extKeyUsage": ["clientAuth"]
}
`
