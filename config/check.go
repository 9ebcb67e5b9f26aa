package config

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
)

// Check performs the start-up checks that need no password: listen
// addresses parse, and the root and intermediate certificate files hold
// certificates and the key file exists, and the provisioners plugins name
// exist with the right type. `stepfort config check` runs it so
// that mistakes upstream only finds at serve time show up early.
func (f *File) Check() error {
	c := f.CA
	for _, a := range []struct{ key, val string }{
		{"address", c.Address}, {"insecureAddress", c.InsecureAddress}, {"metricsAddress", c.MetricsAddress},
	} {
		if a.val == "" {
			continue
		}
		if _, port, err := net.SplitHostPort(a.val); err != nil || port == "" {
			return Errorf(a.key, "%q is not host:port", a.val)
		}
	}
	roots := append([]string(nil), c.Root...)
	for i, r := range roots {
		if err := checkCertFile(r); err != nil {
			return Errorf(fmt.Sprintf("root[%d]", i), "%v", err)
		}
	}
	if c.IntermediateCert != "" {
		if err := checkCertFile(c.IntermediateCert); err != nil {
			return Errorf("crt", "%v", err)
		}
	}
	// A KMS URI (e.g. "awskms:...") is not a file.
	if c.IntermediateKey != "" && c.KMS == nil {
		if _, err := os.Stat(c.IntermediateKey); err != nil {
			return Errorf("key", "%v", err)
		}
	}
	return f.checkProvisioners()
}

func checkCertFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	block, _ := pem.Decode(b)
	der := b
	if block != nil {
		der = block.Bytes
	}
	if _, err := x509.ParseCertificate(der); err != nil {
		return fmt.Errorf("%s: not a certificate: %v", path, err)
	}
	return nil
}
