// Command deviceattest benchmarks the device-attest plugin
// (provisioners/deviceattest, issue 5):
//
//  1. Issuance through ACME device-attest-01 with the inventory gate on vs
//     off, same run. Two stepfort servers (bbolt, `stepfort init`) run side
//     by side; on the "off" one the deviceAttest plugin has
//     "provisioners": [] (gate off). The real step CLI performs the whole
//     flow against swtpm (order, Attestation CA enrollment reused from the
//     warm-up, attested key creation, device-attest-01, finalize), like
//     test/e2e/deviceattest_test.go. Rounds alternate A B B A (A = gate on)
//     with the same N per side; per-issuance medians are compared. That flow
//     is bound by the CLI process and swtpm (~hundreds of ms), so the gate's
//     own cost is also measured in-process: the plugin's wrapped
//     acme.DB.UpdateChallenge (what the server calls at the end of
//     device-attest-01 validation) against a real bbolt inventory of 10,000
//     devices, gate on vs gate off.
//  2. Revoking every certificate of a device that has 1,000 certificates:
//     one device certificate from device-attest-01 plus account
//     certificates bought with it through the X5C provisioner "accounts"
//     (x5c tokens signed by the device certificate's TPM key), which is the
//     plugin's real linking path (AuthorizeSign pending record + issued
//     event). Then DELETE /api/v1/devices/{id}; the time until OCSP reports
//     all of them revoked is printed.
//
// Run it from the repository root: go run ./bench/deviceattest [-n 6] [-certs 1000].
package main

import (
	"flag"
	"fmt"
	"os"
	"time"
)

func main() {
	n := flag.Int("n", 5, "device-attest-01 issuances per round (rounds A B B A, so 2n per side)")
	certs := flag.Int("certs", 1000, "certificates linked to the device that is removed")
	devices := flag.Int("devices", 10000, "inventory size for the in-process gate measurement")
	iters := flag.Int("iters", 20000, "in-process UpdateChallenge calls per side and round")
	flag.Parse()
	start := time.Now()
	if err := run(*n, *certs, *devices, *iters); err != nil {
		fmt.Fprintln(os.Stderr, "bench/deviceattest:", err)
		os.Exit(1)
	}
	fmt.Printf("deviceattest: total %s\n", time.Since(start).Round(time.Second))
}
