// Package adcstest writes certutil -view exports (text and CSV mode,
// UTF-16LE or UTF-8, English, Spanish or German headers) for tests and
// benchmarks, as close to what certutil prints as is known (see
// docs/design/adcs-migration.md and the research notes): CRLF line ends,
// every CSV cell quoted, "1657 Bytes" for binary CSV cells, PEM blocks of
// 64-character lines in text mode, the trailing "CertUtil: ..." line.
package adcstest

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"io"
	"iter"
	"math/big"
	"strconv"
	"strings"
	"time"

	"github.com/stepfort/stepfort/internal/adcs"
)

// Opts say how to write an export.
type Opts struct {
	UTF16      bool           // UTF-16LE, as Windows PowerShell 5.1 "> file" and certutil -Unicode write
	BOM        bool           // a byte order mark first (FF FE, or EF BB BF for UTF-8)
	Headers    string         // "en" (default), "es" or "de": the language of headers and labels
	Columns    []string       // the -out columns in order; nil: adcs.DefaultColumns
	DateFormat string         // "US" (default), "UK", "ISO", "DE" or a Go layout
	Location   *time.Location // nil: UTC (an export made with -gmt)
}

var dateLayouts = map[string]string{
	"": "1/2/2006 3:04 PM", "US": "1/2/2006 3:04 PM", "UK": "02/01/2006 15:04",
	"ISO": "2006-01-02 15:04", "DE": "02.01.2006 15:04",
}

// writer holds what one export needs.
type writer struct {
	o       Opts
	lang    *language
	layout  string
	columns []string
	bw      *bufio.Writer
	out     io.Writer // bw, or a UTF-16 encoder over it
	csv     bool
}

func newWriter(w io.Writer, o Opts, csv bool) (*writer, error) {
	lang := languages[o.Headers]
	if o.Headers == "" {
		lang = languages["en"]
	}
	if lang == nil {
		return nil, fmt.Errorf("adcstest: headers %q: want en, es or de", o.Headers)
	}
	layout, ok := dateLayouts[strings.ToUpper(o.DateFormat)]
	if !ok {
		layout = o.DateFormat
	}
	if o.Location == nil {
		o.Location = time.UTC
	}
	cols := o.Columns
	if cols == nil {
		cols = adcs.DefaultColumns
	}
	wr := &writer{o: o, lang: lang, layout: layout, columns: cols, bw: bufio.NewWriterSize(w, 256<<10), csv: csv}
	wr.out = wr.bw
	if o.UTF16 {
		wr.out = &utf16Writer{w: wr.bw}
	}
	if o.BOM {
		bom := "\xEF\xBB\xBF"
		if o.UTF16 {
			bom = "\xFF\xFE"
		}
		wr.bw.WriteString(bom)
	}
	return wr, nil
}

func (w *writer) print(s string) { io.WriteString(w.out, s) }

// WriteText writes rows the way certutil -view prints them without "csv":
// the schema, one "Row N:" block per row, the summary and the trailer.
func WriteText(w io.Writer, rows iter.Seq[adcs.Row], o Opts) error {
	wr, err := newWriter(w, o, false)
	if err != nil {
		return err
	}
	wr.schema()
	n := 0
	for row := range rows {
		n++
		wr.textRow(n, &row)
	}
	wr.print(fmt.Sprintf("%d %s\r\n", n, wr.lang.rows))
	wr.print(fmt.Sprintf("  %d Row Properties, Total Size = 0, Max Size = 0, Ave Size = 0\r\n", n*len(wr.columns)))
	wr.print("   0 Request Attributes, Total Size = 0, Max Size = 0, Ave Size = 0\r\n")
	wr.print("   0 Certificate Extensions, Total Size = 0, Max Size = 0, Ave Size = 0\r\n")
	wr.print(fmt.Sprintf("  %d Total Fields, Total Size = 0, Max Size = 0, Ave Size = 0\r\n", n*len(wr.columns)))
	wr.print(wr.lang.completed + "\r\n")
	return wr.bw.Flush()
}

func (w *writer) schema() {
	w.print(w.lang.schema + "\r\n  " + w.lang.schemaTitle + "\r\n")
	w.print("  ----------------------------  ----------------------------  ------  ---------\r\n")
	for _, c := range w.columns {
		t, max := columnType(c)
		w.print(fmt.Sprintf("  %-28s  %-28s  %-6s  %s\r\n", c, w.lang.label(c), t, max))
	}
	w.print("\r\n")
}

func (w *writer) textRow(n int, row *adcs.Row) {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %d:\r\n", w.lang.row, n)
	for _, c := range w.columns {
		b.WriteString("  ")
		b.WriteString(w.lang.label(c))
		b.WriteString(":")
		if strings.EqualFold(c, "RawCertificate") && row.Certificate != nil {
			b.WriteString("\r\n")
			writePEM(&b, row.Certificate)
			continue
		}
		b.WriteString(" ")
		b.WriteString(w.value(c, row))
		b.WriteString("\r\n")
	}
	b.WriteString("\r\n")
	w.print(b.String())
}

// writePEM writes a certificate as certutil does: 64-character lines, CRLF.
func writePEM(b *strings.Builder, der []byte) {
	b.WriteString("-----BEGIN CERTIFICATE-----\r\n")
	s := base64.StdEncoding.EncodeToString(der)
	for len(s) > 64 {
		b.WriteString(s[:64])
		b.WriteString("\r\n")
		s = s[64:]
	}
	b.WriteString(s)
	b.WriteString("\r\n-----END CERTIFICATE-----\r\n")
}

// WriteCSV writes rows the way certutil -view csv prints them: a quoted
// header of display names, one quoted record per row, the trailer.
func WriteCSV(w io.Writer, rows iter.Seq[adcs.Row], o Opts) error {
	wr, err := newWriter(w, o, true)
	if err != nil {
		return err
	}
	head := make([]string, len(wr.columns))
	for i, c := range wr.columns {
		head[i] = wr.lang.label(c)
	}
	wr.csvRecord(head)
	cells := make([]string, len(wr.columns))
	for row := range rows {
		for i, c := range wr.columns {
			cells[i] = wr.value(c, &row)
		}
		wr.csvRecord(cells)
	}
	wr.print(wr.lang.completed + "\r\n")
	return wr.bw.Flush()
}

func (w *writer) csvRecord(cells []string) {
	var b strings.Builder
	for i, c := range cells {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('"')
		b.WriteString(strings.ReplaceAll(c, `"`, `""`))
		b.WriteByte('"')
	}
	b.WriteString("\r\n")
	w.print(b.String())
}

// value prints one cell as certutil does in the writer's mode.
func (w *writer) value(column string, row *adcs.Row) string {
	switch strings.ToLower(column) {
	case "request.requestid", "requestid":
		return w.long(row.RequestID, "")
	case "serialnumber":
		if row.Serial == nil {
			return "EMPTY"
		}
		return w.quote(serialHex(row.Serial))
	case "request.disposition", "disposition":
		word := ""
		switch row.Disposition {
		case adcs.DispositionIssued:
			word = w.lang.issued
		case adcs.DispositionRevoked:
			word = w.lang.revoked
		}
		return w.long(int64(row.Disposition), word)
	case "notbefore":
		return w.date(row.NotBefore)
	case "notafter":
		return w.date(row.NotAfter)
	case "request.revokedeffectivewhen", "revokedeffectivewhen", "request.revokedwhen", "revokedwhen":
		return w.date(row.RevokedAt)
	case "request.revokedreason", "revokedreason":
		if row.Reason < 0 || row.Reason >= len(reasonNames) {
			return "EMPTY"
		}
		if w.csv {
			return strconv.Itoa(row.Reason)
		}
		return fmt.Sprintf("0x%x -- %s: %s", row.Reason, w.lang.reason, reasonNames[row.Reason])
	case "commonname", "request.commonname":
		return w.quote(row.CommonName)
	case "certificatetemplate":
		return w.template(row)
	case "rawcertificate":
		if row.Certificate == nil {
			return "EMPTY"
		}
		return fmt.Sprintf("%d Bytes", len(row.Certificate))
	}
	return "EMPTY"
}

// long prints a Long: "0x15 (21) -- Revoked" in text mode, "21" in CSV
// (a real CSV export printed "2" for a request ID).
func (w *writer) long(n int64, word string) string {
	if w.csv {
		return strconv.FormatInt(n, 10)
	}
	s := fmt.Sprintf("0x%x (%d)", n, n)
	if word != "" {
		s += " -- " + word
	}
	return s
}

func (w *writer) date(t time.Time) string {
	if t.IsZero() {
		return "EMPTY"
	}
	return t.In(w.o.Location).Format(w.layout)
}

// quote quotes a string in text mode; CSV quotes every cell anyway.
func (w *writer) quote(s string) string {
	if s == "" {
		return "EMPTY"
	}
	if w.csv {
		return s
	}
	return `"` + s + `"`
}

func (w *writer) template(row *adcs.Row) string {
	switch {
	case row.TemplateOID != "" && row.Template != "" && row.Template != row.TemplateOID:
		if w.csv {
			return row.TemplateOID + " " + row.Template
		}
		return `"` + row.TemplateOID + `" ` + row.Template
	case row.TemplateOID != "":
		return w.quote(row.TemplateOID)
	}
	return w.quote(row.Template)
}

// serialHex prints a serial the way ADCS stores it: the octets of its DER
// INTEGER (a leading 00 when the high bit is set), lower-case hex.
func serialHex(n *big.Int) string {
	b := n.Bytes()
	if len(b) == 0 || b[0]&0x80 != 0 {
		b = append([]byte{0}, b...)
	}
	return fmt.Sprintf("%x", b)
}
