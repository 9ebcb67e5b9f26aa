package inventory

import (
	"bytes"
	"testing"
)

// FuzzImport feeds arbitrary CSV, column mappings, JSON and EK material
// through the import parsers: each must return rows or an error, never
// panic, and never more rows than the limit.
func FuzzImport(f *testing.F) {
	f.Add([]byte("identifier,name,status\nA,a,disabled\n"), "", []byte(`[{"identifiers":["A"]}]`))
	f.Add([]byte("Serial Number,Device Name\nC02,mac\n"), "serial:Serial Number,name:Device Name", []byte(`{}`))
	f.Add([]byte("\"unterminated\n"), "metadata.site:Site", []byte(`[`))
	f.Fuzz(func(t *testing.T, csvData []byte, mapping string, jsonData []byte) {
		m, err := ParseMapping(mapping)
		if err != nil {
			m = nil
		}
		if rows, _, err := ParseCSV(bytes.NewReader(csvData), m, 50); err == nil && len(rows) > 50 {
			t.Fatalf("%d CSV rows over the limit", len(rows))
		}
		if rows, err := ParseJSONRows(bytes.NewReader(jsonData), 50); err == nil && len(rows) > 50 {
			t.Fatalf("%d JSON rows over the limit", len(rows))
		}
		_, _, _ = ParseEKPublic(csvData)
		_, _ = ParseEKCertificate(jsonData)
	})
}
