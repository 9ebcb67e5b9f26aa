package certindex

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"strconv"
	"strings"
)

// CSVHeader is the first row of a CSV export.
var CSVHeader = []string{"serial", "serialHex", "commonName", "dnsNames", "ipAddresses", "emailAddresses", "uris",
	"provisioner", "provisionerType", "notBefore", "notAfter", "status", "revokedAt", "reasonCode", "reason",
	"endpoint", "device", "issuer", "authorityKeyId"}

// csvDoc is what a CSV row needs of a stored record. Times stay the
// strings they are stored as (RFC 3339 in UTC): decoding them to
// time.Time and formatting them again was half the cost of an export.
type csvDoc struct {
	Serial         string   `json:"serial"`
	SerialHex      string   `json:"serialHex"`
	CommonName     string   `json:"commonName"`
	DNSNames       []string `json:"dnsNames"`
	IPAddresses    []string `json:"ipAddresses"`
	EmailAddresses []string `json:"emailAddresses"`
	URIs           []string `json:"uris"`
	Provisioner    struct {
		Name string `json:"name"`
		Type string `json:"type"`
	} `json:"provisioner"`
	NotBefore      string `json:"notBefore"`
	NotAfter       string `json:"notAfter"`
	Issuer         string `json:"issuer"`
	AuthorityKeyID string `json:"authorityKeyId"`
	Revocation     *struct {
		ReasonCode int    `json:"reasonCode"`
		Reason     string `json:"reason"`
		RevokedAt  string `json:"revokedAt"`
	} `json:"revocation"`
	Endpoint string `json:"endpoint"`
	Device   string `json:"device"`
}

// csvRow is one record as CSV cells (CSVHeader); lists are joined with ";".
func csvRow(d *csvDoc, status string) []string {
	var revokedAt, code, reason string
	if r := d.Revocation; r != nil {
		revokedAt, code, reason = r.RevokedAt, strconv.Itoa(r.ReasonCode), r.Reason
	}
	row := []string{d.Serial, d.SerialHex, d.CommonName, strings.Join(d.DNSNames, ";"), strings.Join(d.IPAddresses, ";"),
		strings.Join(d.EmailAddresses, ";"), strings.Join(d.URIs, ";"), d.Provisioner.Name, d.Provisioner.Type,
		d.NotBefore, d.NotAfter, status, revokedAt, code, reason, d.Endpoint, d.Device, d.Issuer, d.AuthorityKeyID}
	for i, c := range row {
		row[i] = neutralise(c)
	}
	return row
}

// neutralise keeps a spreadsheet from reading a cell as a formula (OWASP
// ASVS 5.0 V1.2.10): a cell starting with = + - @ tab or carriage return
// gets a leading single quote. Certificate names are chosen by whoever
// requested the certificate, so they are untrusted.
func neutralise(c string) string {
	if c != "" && strings.ContainsRune("=+-@\t\r", rune(c[0])) {
		return "'" + c
	}
	return c
}

// exporter writes rows in one format: raw takes rows a converter of the
// same format encoded.
type exporter interface {
	raw(b []byte) error
	flush() error
}

type csvExporter struct {
	w   *csv.Writer
	out io.Writer
}

func newCSV(w io.Writer) (*csvExporter, error) {
	e := &csvExporter{w: csv.NewWriter(w), out: w}
	return e, e.w.Write(CSVHeader)
}

func (e *csvExporter) raw(b []byte) error {
	e.w.Flush()
	if err := e.w.Error(); err != nil {
		return err
	}
	_, err := e.out.Write(b)
	return err
}

func (e *csvExporter) flush() error {
	e.w.Flush()
	return e.w.Error()
}

type jsonlExporter struct{ b *bufio.Writer }

func newJSONL(w io.Writer) *jsonlExporter {
	return &jsonlExporter{b: bufio.NewWriterSize(w, 64<<10)}
}

func (e *jsonlExporter) raw(b []byte) error {
	_, err := e.b.Write(b)
	return err
}

func (e *jsonlExporter) flush() error { return e.b.Flush() }

// Formats of an export.
const (
	FormatCSV   = "csv"
	FormatJSONL = "jsonl"
)

// exportBatch is how many rows one export worker decodes and encodes at a
// time; exportWorkers batches are in flight at most, which bounds memory.
const exportBatch = 256

// WriteExport writes every match of q's filter to w in format and returns
// the number of rows written. Decoding the stored JSON and encoding the
// output are most of the cost, so batches are converted in parallel and
// written in order; at most 2×GOMAXPROCS batches are in memory.
func WriteExport(w io.Writer, store Store, q *Query, format string) (int, error) {
	var ex exporter
	switch format {
	case FormatCSV:
		c, err := newCSV(w)
		if err != nil {
			return 0, err
		}
		ex = c
	case FormatJSONL:
		ex = newJSONL(w)
	default:
		return 0, fmt.Errorf("format: must be csv or jsonl, got %q", format)
	}
	p := newPipeline(ex, format)
	batch := make([]stored, 0, exportBatch)
	err := store.Export(q, func(doc []byte, status string) error {
		batch = append(batch, stored{append([]byte(nil), doc...), status})
		if len(batch) < exportBatch {
			return nil
		}
		err := p.submit(batch)
		batch = make([]stored, 0, exportBatch)
		return err
	})
	if err == nil && len(batch) > 0 {
		err = p.submit(batch)
	}
	n, perr := p.close()
	if err == nil {
		err = perr
	}
	if err != nil {
		return n, err
	}
	return n, ex.flush()
}

// pipeline converts batches of stored records to output bytes on
// GOMAXPROCS workers and writes them in submission order.
type pipeline struct {
	ex      exporter
	format  string
	pending chan chan converted
	failed  chan struct{} // closed (after err is set) when a write fails
	done    chan struct{}
	n       int
	err     error
}

type converted struct {
	out []byte
	n   int
	err error
}

// stored is one exported row: its stored JSON and its status.
type stored struct {
	doc    []byte
	status string
}

func newPipeline(ex exporter, format string) *pipeline {
	p := &pipeline{ex: ex, format: format, pending: make(chan chan converted, 2*runtime.GOMAXPROCS(0)),
		failed: make(chan struct{}), done: make(chan struct{})}
	go p.write()
	return p
}

// submit starts converting a batch; it blocks while too many are in
// flight, and fails once writing has failed.
func (p *pipeline) submit(docs []stored) error {
	select {
	case <-p.failed:
		return p.err
	default:
	}
	res := make(chan converted, 1)
	go func() { res <- convert(docs, p.format) }()
	select {
	case p.pending <- res:
		return nil
	case <-p.failed:
		return p.err
	}
}

// write writes converted batches in order until pending is closed or a
// write fails.
func (p *pipeline) write() {
	defer close(p.done)
	for res := range p.pending {
		c := <-res
		if c.err == nil {
			c.err = p.ex.raw(c.out)
		}
		if c.err != nil {
			p.err = c.err
			close(p.failed)
			for range p.pending { //nolint:revive // drain until close
			}
			return
		}
		p.n += c.n
	}
}

func (p *pipeline) close() (int, error) {
	close(p.pending)
	<-p.done
	return p.n, p.err
}

// convert turns a batch of stored records into output. A JSON line is
// the stored JSON with the status added: byte for byte what encoding a
// View gives (the Record's fields, then "status"), without decoding.
func convert(docs []stored, format string) converted {
	var buf bytes.Buffer
	if format == FormatJSONL {
		for _, d := range docs {
			doc := bytes.TrimRight(d.doc, " \n")
			if len(doc) < 2 || doc[len(doc)-1] != '}' {
				return converted{err: fmt.Errorf("%s row is not a JSON object", Table)}
			}
			buf.Write(doc[:len(doc)-1])
			buf.WriteString(`,"status":"`)
			buf.WriteString(d.status)
			buf.WriteString("\"}\n")
		}
		return converted{out: buf.Bytes(), n: len(docs)}
	}
	w := csv.NewWriter(&buf)
	for _, d := range docs {
		var r csvDoc
		if err := json.Unmarshal(d.doc, &r); err != nil {
			return converted{err: fmt.Errorf("decode %s row: %w", Table, err)}
		}
		if err := w.Write(csvRow(&r, d.status)); err != nil {
			return converted{err: err}
		}
	}
	w.Flush()
	if err := w.Error(); err != nil {
		return converted{err: err}
	}
	return converted{out: buf.Bytes(), n: len(docs)}
}
