package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"go.step.sm/crypto/tpm"
	"go.step.sm/crypto/tpm/storage"

	"github.com/stepfort/stepfort/bench/internal/benchproc"
	"github.com/stepfort/stepfort/internal/testenv"
)

func run(n, certs, devices, iters int) error {
	root, err := testenv.RepoRoot()
	if err != nil {
		return err
	}
	stepBin, err := testenv.Tool("step")
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "dabench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	bin := filepath.Join(work, "stepfort")
	if err := benchproc.BuildStepfort(context.Background(), root, bin); err != nil {
		return err
	}

	// In-process gate cost first (no servers running yet, quiet machine).
	if err := gateCost(work, devices, iters); err != nil {
		return fmt.Errorf("in-process gate: %w", err)
	}

	sock, stopTPM, err := startSWTPM()
	if err != nil {
		return err
	}
	defer stopTPM()
	on, err := startServer(work, bin, "on", true)
	if err != nil {
		return err
	}
	defer on.proc.Kill9()
	off, err := startServer(work, bin, "off", false)
	if err != nil {
		return err
	}
	defer off.proc.Kill9()

	// The device: the step CLI's EK (first RSA EK), registered on both.
	ctx := context.Background()
	tp, err := tpm.New(tpm.WithDeviceName(sock), tpm.WithStore(storage.NewDirstore(filepath.Join(work, "ekstore"))), tpm.WithDisableDownload())
	if err != nil {
		return err
	}
	eks, err := tp.GetEKs(ctx)
	if err != nil {
		return fmt.Errorf("EKs: %w", err)
	}
	ek := eks[0]
	for _, e := range eks {
		if strings.HasPrefix(e.Type(), "RSA") {
			ek = e
			break
		}
	}
	u, err := ek.FingerprintURI()
	if err != nil {
		return err
	}
	urn := u.String()
	ekDER, _ := x509.MarshalPKIXPublicKey(ek.Public())
	ekPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: ekDER}))
	deviceID := map[*server]string{}
	for _, s := range []*server{on, off} {
		st, body := s.do("POST", s.url+"/api/v1/devices", mustJSON(map[string]any{"ekPublic": ekPEM, "name": "bench-laptop"}), "application/json", true)
		if st != 201 {
			return fmt.Errorf("%s: register device: %d %s", s.name, st, body)
		}
		var d struct{ ID string }
		_ = json.Unmarshal(body, &d)
		deviceID[s] = d.ID
		fp, err := exec.Command(stepBin, "certificate", "fingerprint", s.root).Output()
		if err != nil {
			return fmt.Errorf("fingerprint: %v", err)
		}
		if out, err := s.step(stepBin, "ca", "bootstrap", "--ca-url", s.url, "--fingerprint", strings.TrimSpace(string(fp)), "--force"); err != nil {
			return fmt.Errorf("%s: step ca bootstrap: %v\n%s", s.name, err, out)
		}
	}

	issue := func(s *server, key string) (time.Duration, error) {
		crt := filepath.Join(work, s.name+"-"+key+".crt")
		t0 := time.Now()
		out, err := s.step(stepBin, "ca", "certificate", urn, crt, "--provisioner", "agents", "--force",
			"--ca-url", s.url,
			"--attestation-uri", "tpmkms:name="+key+";device="+sock,
			"--attestation-ca-url", s.url+"/attestation",
			"--attestation-ca-root", s.root, // the TLS root of the server hosting the Attestation CA
			"--tpm-storage-directory", s.storage)
		d := time.Since(t0)
		if err != nil {
			return 0, fmt.Errorf("%s: device-attest-01 issuance: %v\n%s\nserver log:\n%s", s.name, err, out, s.proc.Log())
		}
		return d, nil
	}
	// Warm-up (not timed): enrolls the AK with each CA's Attestation CA, as
	// an agent does once; the gate-on one is the device certificate that
	// buys the account certificates below.
	warm := map[*server]time.Duration{}
	for _, s := range []*server{on, off} {
		d, err := issue(s, "warm")
		if err != nil {
			return err
		}
		warm[s] = d
	}
	fmt.Printf("issuance: warm-up (AK enrollment + first device-attest-01): gate on %s, gate off %s\n", warm[on].Round(time.Millisecond), warm[off].Round(time.Millisecond))

	lat := map[*server][]time.Duration{}
	for r, s := range []*server{on, off, off, on} {
		for i := range n {
			d, err := issue(s, fmt.Sprintf("k%d-%d", r, i))
			if err != nil {
				return err
			}
			lat[s] = append(lat[s], d)
		}
	}
	mOn, mOff := median(lat[on]), median(lat[off])
	fmt.Printf("issuance: step CLI + swtpm device-attest-01, rounds A B B A, %d per side: gate on median %s (min %s), gate off median %s (min %s)\n",
		len(lat[on]), mOn.Round(time.Millisecond), minDur(lat[on]).Round(time.Millisecond), mOff.Round(time.Millisecond), minDur(lat[off]).Round(time.Millisecond))
	fmt.Printf("issuance: gate on / gate off throughput ratio %.3f (target ≥ 0.95; end to end, noise of the CLI+TPM flow dominates)\n", float64(mOff)/float64(mOn))
	if gateOverhead > 0 {
		fmt.Printf("issuance: with the in-process gate cost %s per challenge added to the gate-off median: ratio %.4f\n",
			gateOverhead.Round(time.Microsecond), float64(mOff)/float64(mOff+gateOverhead))
	}

	return revokeBench(ctx, on, deviceID[on], sock, filepath.Join(work, "on-warm.crt"), certs)
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func minDur(ds []time.Duration) time.Duration {
	m := ds[0]
	for _, d := range ds {
		m = min(m, d)
	}
	return m
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
