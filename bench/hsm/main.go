//go:build cgo

// Command hsm measures what keeping the CA key in a PKCS#11 token costs:
// certificate issuance (x509.CreateCertificate signed by the intermediate
// key) and OCSP pre-signing (ocsp.CreateResponse), each with the key in a
// SoftHSM2 token through stepfort's pkcs11 KMS (internal/hsm) and with the
// same kind of key (ECDSA P-256) in memory, as a key read from disk is.
// It prints operations per second and the ratio.
//
// SoftHSM2 is software: the ratio is the PKCS#11 path's overhead (cgo,
// session pool, the module's own crypto), not a hardware HSM's speed.
//
//	CGO_ENABLED=1 go run ./bench/hsm [-n 2000] [-c 4]
package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"flag"
	"fmt"
	"math/big"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.step.sm/crypto/kms/apiv1"
	"golang.org/x/crypto/ocsp"

	"github.com/stepfort/stepfort/internal/hsm"
	"github.com/stepfort/stepfort/internal/testenv"
)

func main() {
	n := flag.Int("n", 2000, "operations per measurement")
	conc := flag.Int("c", 4, "concurrent workers")
	flag.Parse()
	if err := run(*n, *conc); err != nil {
		fmt.Fprintln(os.Stderr, "bench/hsm:", err)
		os.Exit(1)
	}
}

func run(n, conc int) error {
	dir, err := os.MkdirTemp("", "bench-hsm")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	h, err := testenv.InitSoftHSM(dir, "bench", "1234")
	if err != nil {
		return err
	}
	os.Setenv("SOFTHSM2_CONF", h.Conf)
	km, err := hsm.Open(context.Background(), apiv1.Options{Type: apiv1.PKCS11, URI: h.KMSURI()})
	if err != nil {
		return err
	}
	defer km.Close()
	const name = "pkcs11:id=01;object=bench-intermediate"
	if _, err := km.CreateKey(&apiv1.CreateKeyRequest{Name: name, SignatureAlgorithm: apiv1.ECDSAWithSHA256}); err != nil {
		return err
	}
	hsmKey, err := km.CreateSigner(&apiv1.CreateSignerRequest{SigningKey: name})
	if err != nil {
		return err
	}
	diskKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	fmt.Printf("HSM vs disk: ECDSA P-256 intermediate key, SoftHSM2 %s, %d operations, %d workers\n", testenv.SoftHSMModule, n, conc)
	fmt.Printf("%-16s %12s %12s %8s\n", "operation", "disk ops/s", "hsm ops/s", "hsm/disk")
	for _, op := range []struct {
		name string
		fn   func(crypto.Signer, *x509.Certificate) error
	}{
		{"issuance", func(s crypto.Signer, ca *x509.Certificate) error { return issue(s, ca, leafKey) }},
		{"ocsp presign", func(s crypto.Signer, ca *x509.Certificate) error { return presign(s, ca) }},
	} {
		var rates [2]float64
		for i, key := range []crypto.Signer{diskKey, hsmKey} {
			ca, err := caCert(key)
			if err != nil {
				return err
			}
			if rates[i], err = measure(n, conc, func() error { return op.fn(key, ca) }); err != nil {
				return fmt.Errorf("%s: %w", op.name, err)
			}
		}
		fmt.Printf("%-16s %12.0f %12.0f %8.2f\n", op.name, rates[0], rates[1], rates[1]/rates[0])
	}
	return nil
}

func measure(n, conc int, fn func() error) (float64, error) {
	var next atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				if err := fn(); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return 0, err
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

func caCert(key crypto.Signer) (*x509.Certificate, error) {
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Bench Intermediate CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

func issue(ca crypto.Signer, caCert *x509.Certificate, leaf *ecdsa.PrivateKey) error {
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: "device.example"}, DNSNames: []string{"device.example"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	_, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, leaf.Public(), ca)
	return err
}

func presign(ca crypto.Signer, caCert *x509.Certificate) error {
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	now := time.Now()
	_, err := ocsp.CreateResponse(caCert, caCert, ocsp.Response{
		Status: ocsp.Good, SerialNumber: serial, ThisUpdate: now, NextUpdate: now.Add(24 * time.Hour),
	}, ca)
	return err
}
