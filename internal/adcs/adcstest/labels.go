package adcstest

import "strings"

// language holds the words certutil prints in one display language. The
// English ones are from real output; of the Spanish ones only "Id. de
// solicitud emitida" and "Disposición de la solicitud" are; the rest, and
// the German ones, are plausible stand-ins: the reader must not depend on
// them anyway.
type language struct {
	labels      map[string]string // lower-case -out name → display name
	row, rows   string
	issued      string
	revoked     string
	reason      string
	completed   string
	schema      string
	schemaTitle string
}

var languages = map[string]*language{
	"en": {
		labels: map[string]string{
			"request.requestid": "Request ID", "requestid": "Issued Request ID",
			"serialnumber": "Serial Number", "request.disposition": "Request Disposition",
			"disposition": "Issued Request Disposition", "notbefore": "Certificate Effective Date",
			"notafter": "Certificate Expiration Date", "request.revokedeffectivewhen": "Effective Revocation Date",
			"revokedeffectivewhen": "Issued Effective Revocation Date", "request.revokedwhen": "Revocation Date",
			"revokedwhen": "Issued Revocation Date", "request.revokedreason": "Revocation Reason",
			"revokedreason": "Issued Revocation Reason", "commonname": "Issued Common Name",
			"request.commonname": "Request Common Name", "certificatetemplate": "Certificate Template",
			"rawcertificate": "Binary Certificate", "certificatehash": "Certificate Hash",
		},
		row: "Row", rows: "Rows", issued: "Issued", revoked: "Revoked", reason: "Reason",
		completed:   "CertUtil: -view command completed successfully.",
		schema:      "Schema:",
		schemaTitle: "Column Name                   Localized Name                Type    MaxLength",
	},
	"es": {
		labels: map[string]string{
			"request.requestid": "Id. de solicitud", "requestid": "Id. de solicitud emitida",
			"serialnumber": "Número de serie", "request.disposition": "Disposición de la solicitud",
			"disposition": "Disposición de la solicitud emitida", "notbefore": "Fecha efectiva del certificado",
			"notafter": "Fecha de expiración del certificado", "request.revokedeffectivewhen": "Fecha efectiva de revocación",
			"revokedeffectivewhen": "Fecha efectiva de revocación emitida", "request.revokedwhen": "Fecha de revocación",
			"revokedwhen": "Fecha de revocación emitida", "request.revokedreason": "Motivo de revocación",
			"revokedreason": "Motivo de revocación emitido", "commonname": "Nombre común emitido",
			"request.commonname": "Nombre común de la solicitud", "certificatetemplate": "Plantilla de certificado",
			"rawcertificate": "Certificado binario", "certificatehash": "Hash de certificado",
		},
		row: "Fila", rows: "Filas", issued: "Emitido", revoked: "Revocado", reason: "Motivo",
		completed:   "CertUtil: -view comando completado correctamente.",
		schema:      "Esquema:",
		schemaTitle: "Nombre de columna             Nombre localizado             Tipo    Longitud máxima",
	},
	"de": {
		labels: map[string]string{
			"request.requestid": "Anforderungs-ID", "requestid": "Ausgestellte Anforderungs-ID",
			"serialnumber": "Seriennummer", "request.disposition": "Anforderungsstatus",
			"disposition": "Ausgestellter Anforderungsstatus", "notbefore": "Zertifikat gültig ab",
			"notafter": "Ablaufdatum des Zertifikats", "request.revokedeffectivewhen": "Effektives Sperrdatum",
			"revokedeffectivewhen": "Ausgestelltes effektives Sperrdatum", "request.revokedwhen": "Sperrdatum",
			"revokedwhen": "Ausgestelltes Sperrdatum", "request.revokedreason": "Sperrgrund",
			"revokedreason": "Ausgestellter Sperrgrund", "commonname": "Ausgestellter allgemeiner Name",
			"request.commonname": "Allgemeiner Name der Anforderung", "certificatetemplate": "Zertifikatvorlage",
			"rawcertificate": "Binärzertifikat", "certificatehash": "Zertifikathash",
		},
		row: "Zeile", rows: "Zeilen", issued: "Ausgestellt", revoked: "Gesperrt", reason: "Grund",
		completed:   "CertUtil: -view-Befehl wurde erfolgreich ausgeführt.",
		schema:      "Schema:",
		schemaTitle: "Spaltenname                   Lokalisierter Name            Typ     Maximale Länge",
	},
}

// reasonNames are the CRLReason names certutil prints (English in every language here).
var reasonNames = []string{"Unspecified", "Key Compromise", "CA Compromise", "Affiliation Changed",
	"Superseded", "Cessation of Operation", "Certificate Hold", "", "Remove From CRL",
	"Privilege Withdrawn", "AA Compromise"}

func (l *language) label(column string) string {
	if s, ok := l.labels[strings.ToLower(column)]; ok {
		return s
	}
	return column
}

// columnType is the type and maximum length certutil's schema shows.
func columnType(column string) (string, string) {
	switch strings.ToLower(column) {
	case "request.requestid", "requestid", "request.disposition", "disposition",
		"request.revokedreason", "revokedreason":
		return "Long", "4 -- Indexed"
	case "notbefore", "notafter", "request.revokedeffectivewhen", "revokedeffectivewhen",
		"request.revokedwhen", "revokedwhen":
		return "Date", "8 -- Indexed"
	case "rawcertificate":
		return "Binary", "16384"
	}
	return "String", "128 -- Indexed"
}
