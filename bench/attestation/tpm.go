package main

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"go.step.sm/crypto/tpm"
	"go.step.sm/crypto/tpm/storage"

	"github.com/stepfort/stepfort/internal/testenv"
	"github.com/stepfort/stepfort/provisioners/attestationca"
)

// client is one simulated device: its own swtpm (so its own EK, registered
// in the inventory) and one AK whose /attest body it replays. The
// Attestation CA keeps one open session per EK, so clients sharing an EK
// would replace each other's sessions.
type client struct {
	ak   *tpm.AK
	body []byte // POST /attestation/attest
	stop func()
}

// newClients starts n swtpm instances under work and makes one registered
// client on each. On error the instances already started are stopped.
func newClients(ctx context.Context, work string, n int, s *server) ([]*client, error) {
	clients := make([]*client, 0, n)
	seen := map[[32]byte]bool{}
	for i := range n {
		c, ekDER, err := newClient(ctx, filepath.Join(work, fmt.Sprintf("tpm%d", i)))
		if err == nil {
			clients = append(clients, c)
			err = registerEK(s, ekDER, i, seen)
		}
		if err != nil {
			stopClients(clients)
			return nil, fmt.Errorf("client %d: %w", i, err)
		}
	}
	return clients, nil
}

func stopClients(cs []*client) {
	for _, c := range cs {
		c.stop()
	}
}

// newClient starts a swtpm in dir, creates an AK on it and builds its /attest
// body. It returns the EK's PKIX DER too.
func newClient(ctx context.Context, dir string) (*client, []byte, error) {
	sock, stop, err := startSWTPM(dir)
	if err != nil {
		return nil, nil, err
	}
	c, ekDER, err := makeAK(ctx, sock, filepath.Join(dir, "store"))
	if err != nil {
		stop()
		return nil, nil, err
	}
	c.stop = stop
	return c, ekDER, nil
}

// makeAK opens the TPM on sock and pre-generates an AK and its /attest body.
func makeAK(ctx context.Context, sock, store string) (*client, []byte, error) {
	tp, err := tpm.New(tpm.WithDeviceName(sock), tpm.WithStore(storage.NewDirstore(store)), tpm.WithDisableDownload())
	if err != nil {
		return nil, nil, err
	}
	eks, err := tp.GetEKs(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("EKs: %w", err)
	}
	ekDER, err := x509.MarshalPKIXPublicKey(eks[0].Public())
	if err != nil {
		return nil, nil, err
	}
	info, err := tp.Info(ctx)
	if err != nil {
		return nil, nil, err
	}
	ak, err := tp.CreateAK(ctx, "bench-ak")
	if err != nil {
		return nil, nil, fmt.Errorf("create AK: %w", err)
	}
	params, err := ak.AttestationParameters(ctx)
	if err != nil {
		return nil, nil, err
	}
	body := mustJSON(attestationca.AttestRequest{
		TPMInfo: attestationca.TPMInfo{Version: 2, Manufacturer: strconv.FormatUint(uint64(info.Manufacturer.ID), 10), Model: info.VendorInfo, FirmwareVersion: info.FirmwareVersion.String()},
		EKPub:   ekDER,
		AttestParams: attestationca.AttestationParameters{Public: params.Public, CreateData: params.CreateData,
			CreateAttestation: params.CreateAttestation, CreateSignature: params.CreateSignature},
	})
	return &client{ak: ak, body: body}, ekDER, nil
}

// registerEK adds the EK to the inventory as device bench-tpm-i, refusing an
// EK already seen: two clients on one EK would invalidate the measurement.
func registerEK(s *server, ekDER []byte, i int, seen map[[32]byte]bool) error {
	fp := sha256.Sum256(ekDER)
	if seen[fp] {
		return fmt.Errorf("EK %x is shared with another client", fp[:8])
	}
	seen[fp] = true
	ekPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: ekDER}))
	if st, body := post(s.hc, s.url+"/api/v1/devices", s.token, "application/json", mustJSON(map[string]any{"ekPublic": ekPEM, "name": fmt.Sprintf("bench-tpm-%d", i)})); st != 201 {
		return fmt.Errorf("register EK: %d %s", st, body)
	}
	return nil
}

// startSWTPM provisions a fresh software TPM (its own EK) in dir and serves
// it on a UNIX socket there.
func startSWTPM(dir string) (string, func(), error) {
	bin, err := testenv.Tool("swtpm")
	if err != nil {
		return "", nil, err
	}
	setup, err := testenv.Tool("swtpm_setup")
	if err != nil {
		return "", nil, err
	}
	state := filepath.Join(dir, "state")
	if err := os.MkdirAll(state, 0o700); err != nil {
		return "", nil, err
	}
	// No EK certificate needed here: the bench does not set ekRoots.
	if out, err := exec.Command(setup, "--tpm2", "--tpmstate", state, "--overwrite").CombinedOutput(); err != nil {
		return "", nil, fmt.Errorf("swtpm_setup: %v\n%s", err, out)
	}
	sock := filepath.Join(dir, "tpm.sock") // UNIX socket paths are limited to 108 bytes: work is short
	p, err := testenv.NewProcess(filepath.Join(dir, "swtpm.log"), bin, []string{"socket", "--tpm2", "--tpmstate", "dir=" + state,
		"--server", "type=unixio,path=" + sock, "--ctrl", "type=unixio,path=" + sock + ".ctrl", "--flags", "not-need-init,startup-clear"}, nil)
	if err != nil {
		return "", nil, err
	}
	for range 200 {
		if _, err := os.Stat(sock); err == nil {
			return sock, func() { _ = p.Kill9() }, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = p.Kill9()
	return "", nil, fmt.Errorf("swtpm socket %s did not appear", sock)
}
