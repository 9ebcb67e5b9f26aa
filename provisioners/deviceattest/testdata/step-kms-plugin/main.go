// Command step-kms-plugin is a minimal stand-in for smallstep's
// step-kms-plugin (not on the Go module proxy), enough for the step CLI to
// sign an x5c token with a tpmkms: key in the e2e tests: "key" prints the
// public key as PEM, "sign" signs the digest on stdin, in base64, and
// "certificate" prints a certificate file.
package main

import (
	"context"
	"crypto"
	"crypto/rsa"
	"encoding/base64"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"os"

	"go.step.sm/crypto/kms/apiv1"
	"go.step.sm/crypto/kms/tpmkms"
	"go.step.sm/crypto/pemutil"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run() error {
	if len(os.Args) < 2 {
		return fmt.Errorf("usage: step-kms-plugin key|sign [flags] <key>")
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ContinueOnError)
	kmsURI := fs.String("kms", "", "")
	_ = fs.String("format", "base64", "")
	alg := fs.String("alg", "", "")
	pss := fs.Bool("pss", false, "")
	salt := fs.Int("salt-length", 0, "")
	if err := fs.Parse(os.Args[2:]); err != nil || fs.NArg() != 1 {
		return fmt.Errorf("bad arguments %v", os.Args[1:])
	}
	key := fs.Arg(0)
	if os.Args[1] == "certificate" {
		// The step CLI loads --x5c-cert through the plugin once --kms is
		// set; a file name is answered with the file.
		b, err := os.ReadFile(key)
		if err != nil {
			return err
		}
		_, err = os.Stdout.Write(b)
		return err
	}
	km, err := tpmkms.New(context.Background(), apiv1.Options{Type: apiv1.TPMKMS, URI: *kmsURI})
	if err != nil {
		return err
	}
	switch os.Args[1] {
	case "key":
		pub, err := km.GetPublicKey(&apiv1.GetPublicKeyRequest{Name: key})
		if err != nil {
			return err
		}
		b, err := pemutil.Serialize(pub)
		if err != nil {
			return err
		}
		return pem.Encode(os.Stdout, b)
	case "sign":
		signer, err := km.CreateSigner(&apiv1.CreateSignerRequest{SigningKey: key})
		if err != nil {
			return err
		}
		digest, err := io.ReadAll(os.Stdin)
		if err != nil {
			return err
		}
		var opts crypto.SignerOpts
		switch {
		case *alg == "SHA384" || *alg == "" && len(digest) == 48:
			opts = crypto.SHA384
		case *alg == "SHA512" || *alg == "" && len(digest) == 64:
			opts = crypto.SHA512
		default:
			opts = crypto.SHA256
		}
		if *pss {
			opts = &rsa.PSSOptions{SaltLength: *salt, Hash: opts.HashFunc()}
		}
		sig, err := signer.Sign(nil, digest, opts)
		if err != nil {
			return err
		}
		fmt.Print(base64.StdEncoding.EncodeToString(sig))
		return nil
	}
	return fmt.Errorf("unsupported command %q", os.Args[1])
}
