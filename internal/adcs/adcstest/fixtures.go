package adcstest

import _ "embed"

// SpanishCSV is a CSV export with Spanish headers in UTF-16LE with a BOM,
// as Windows PowerShell 5.1 writes "certutil -view csv > file" on a
// Spanish CA. Its -out list is adcs.DefaultColumns and its dates are in
// the UK format (28/05/2025 15:24). Rows: 2 issued, 3 revoked (key
// compromise, 30/07/2025 11:29, common name "José Núñez"), 4 denied.
//
//go:embed testdata/es-utf16le-bom.csv
var SpanishCSV []byte
