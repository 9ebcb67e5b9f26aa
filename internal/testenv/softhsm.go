package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// SoftHSMModule is the SoftHSM2 PKCS#11 module of Debian's softhsm2 package.
const SoftHSMModule = "/usr/lib/softhsm/libsofthsm2.so"

// SoftHSM is a SoftHSM2 installation private to one test: its own
// configuration file and token directory. Processes see it through
// SOFTHSM2_CONF (Env); the token label is "stepfort".
type SoftHSM struct {
	Dir      string // holds softhsm2.conf, tokens/ and the PIN file
	Conf     string // the SOFTHSM2_CONF file
	TokenDir string // directories.tokendir
	Label    string // token label
	PIN      string // user PIN
	PINFile  string // the PIN, for pin-source
}

// NewSoftHSM initializes a token labelled "stepfort" with PIN 1234 in a
// temporary directory of t. It fails the test if softhsm2-util or the
// module is missing (scripts/install-tools.sh installs them).
func NewSoftHSM(t testing.TB) *SoftHSM {
	t.Helper()
	h, err := InitSoftHSM(t.TempDir(), "stepfort", "1234")
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// InitSoftHSM makes a SoftHSM2 configuration under dir and initializes a
// token with the given label and user PIN. It is for tests and bench
// programs.
func InitSoftHSM(dir, label, pin string) (*SoftHSM, error) {
	if _, err := os.Stat(SoftHSMModule); err != nil {
		return nil, fmt.Errorf("softhsm2: %w (install Debian softhsm2: make tools)", err)
	}
	util, err := exec.LookPath("softhsm2-util")
	if err != nil {
		return nil, fmt.Errorf("softhsm2-util: %w (install Debian softhsm2: make tools)", err)
	}
	h := &SoftHSM{
		Dir:      dir,
		Conf:     filepath.Join(dir, "softhsm2.conf"),
		TokenDir: filepath.Join(dir, "tokens"),
		Label:    label,
		PIN:      pin,
		PINFile:  filepath.Join(dir, "pin"),
	}
	if err := os.MkdirAll(h.TokenDir, 0o700); err != nil {
		return nil, err
	}
	conf := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = true\n", h.TokenDir)
	if err := os.WriteFile(h.Conf, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(h.PINFile, []byte(pin+"\n"), 0o600); err != nil {
		return nil, err
	}
	cmd := exec.Command(util, "--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", "so-"+pin)
	cmd.Env = h.Env(os.Environ())
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("softhsm2-util --init-token: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return h, nil
}

// Env returns env with SOFTHSM2_CONF set to this installation.
func (h *SoftHSM) Env(env []string) []string {
	out := make([]string, 0, len(env)+1)
	for _, e := range env {
		if !strings.HasPrefix(e, "SOFTHSM2_CONF=") {
			out = append(out, e)
		}
	}
	return append(out, "SOFTHSM2_CONF="+h.Conf)
}

// KMSURI is the kms URI of the token: module, token label and a pin-source.
func (h *SoftHSM) KMSURI() string {
	return fmt.Sprintf("pkcs11:module-path=%s;token=%s?pin-source=%s", SoftHSMModule, h.Label, h.PINFile)
}

// Remove moves the token directory away, which SoftHSM2 sees as the token
// (and its objects) disappearing: a stand-in for an HSM restart. Restore
// puts it back.
func (h *SoftHSM) Remove() error { return os.Rename(h.TokenDir, h.TokenDir+".away") }

// Restore undoes Remove.
func (h *SoftHSM) Restore() error { return os.Rename(h.TokenDir+".away", h.TokenDir) }
