package adcs_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"testing"
	"time"

	"github.com/stepfort/stepfort/internal/adcs"
)

// result is everything a Reader returned for one file.
type result struct {
	rows  []*adcs.Row
	errs  []*adcs.RowError
	fatal error
}

func readAll(t testing.TB, data []byte, o adcs.Options) result {
	t.Helper()
	r, err := adcs.NewReader(bytes.NewReader(data), o)
	if err != nil {
		return result{fatal: err}
	}
	var res result
	for i := 0; i < 1_000_000; i++ {
		row, err := r.Next()
		var re *adcs.RowError
		switch {
		case errors.Is(err, io.EOF):
			return res
		case errors.As(err, &re):
			res.errs = append(res.errs, re)
		case err != nil:
			res.fatal = err
			return res
		default:
			res.rows = append(res.rows, row)
		}
	}
	t.Fatal("the reader does not stop")
	return res
}

// mustRead fails the test on any error.
func mustRead(t *testing.T, data []byte, o adcs.Options) []*adcs.Row {
	t.Helper()
	res := readAll(t, data, o)
	if res.fatal != nil {
		t.Fatalf("fatal: %v", res.fatal)
	}
	for _, e := range res.errs {
		t.Errorf("row error: %v", e)
	}
	return res.rows
}

func hexInt(s string) *big.Int {
	n, ok := new(big.Int).SetString(s, 16)
	if !ok {
		panic(s)
	}
	return n
}

// newCert makes a self-signed CA certificate with the given serial.
func newCert(t testing.TB, serial *big.Int, cn string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC), NotAfter: time.Date(2034, 1, 1, 0, 0, 0, 0, time.UTC),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, key
}

func date(y int, m time.Month, d, h, min int) time.Time {
	return time.Date(y, m, d, h, min, 0, 0, time.UTC)
}
