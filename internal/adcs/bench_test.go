package adcs_test

import (
	"bufio"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"iter"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stepfort/stepfort/internal/adcs"
	"github.com/stepfort/stepfort/internal/adcs/adcstest"
)

// benchTemplate is an ADCS-sized certificate (RSA 2048, SANs, CDP, AIA,
// about 1.2 kB) with a 19-octet serial for adcstest.Synthetic.
func benchTemplate(b *testing.B) []byte {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		b.Fatal(err)
	}
	tpl := &x509.Certificate{
		SerialNumber: adcstest.SyntheticSerial(1), Subject: pkix.Name{CommonName: "host-00000001.corp.example", Organization: []string{"Corp"}},
		NotBefore: time.Now(), NotAfter: time.Now().AddDate(1, 0, 0),
		DNSNames:              []string{"host-00000001.corp.example", "host-00000001"},
		CRLDistributionPoints: []string{"http://pki.corp.example/CertEnroll/Corp%20Issuing%20CA%201.crl", "ldap:///CN=Corp%20Issuing%20CA%201,CN=PKI-SRV01,CN=CDP,CN=Public%20Key%20Services,CN=Services,CN=Configuration,DC=corp,DC=example?certificateRevocationList?base?objectClass=cRLDistributionPoint"},
		IssuingCertificateURL: []string{"http://pki.corp.example/CertEnroll/PKI-SRV01_Corp%20Issuing%20CA%201.crt"},
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &key.PublicKey, key)
	if err != nil {
		b.Fatal(err)
	}
	return der
}

type writeFunc func(io.Writer, iter.Seq[adcs.Row], adcstest.Opts) error

// benchRead writes b.N synthetic rows to a file, then times reading them.
func benchRead(b *testing.B, write writeFunc, o adcstest.Opts) {
	seq, err := adcstest.Synthetic(b.N, benchTemplate(b))
	if err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(b.TempDir(), "export")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := write(f, seq, o); err != nil {
		b.Fatal(err)
	}
	st, _ := f.Stat()
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(st.Size() / int64(b.N))
	b.ReportAllocs()
	b.ResetTimer()
	r, err := adcs.NewReader(bufio.NewReaderSize(f, 1<<20), adcs.Options{})
	if err != nil {
		b.Fatal(err)
	}
	n := 0
	for {
		_, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			b.Fatal(err)
		}
		n++
	}
	b.StopTimer()
	if n != b.N {
		b.Fatalf("read %d rows of %d", n, b.N)
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "rows/s")
}

// BenchmarkReadText: text mode with the PEM certificate, UTF-16LE with a
// BOM (Windows PowerShell 5.1), the largest form of an export.
func BenchmarkReadText(b *testing.B) {
	benchRead(b, adcstest.WriteText, adcstest.Opts{UTF16: true, BOM: true})
}

// BenchmarkReadTextUTF8: the same in UTF-8.
func BenchmarkReadTextUTF8(b *testing.B) {
	benchRead(b, adcstest.WriteText, adcstest.Opts{})
}

// BenchmarkReadCSV: CSV mode (no certificates), UTF-16LE with a BOM.
func BenchmarkReadCSV(b *testing.B) {
	benchRead(b, adcstest.WriteCSV, adcstest.Opts{UTF16: true, BOM: true})
}
