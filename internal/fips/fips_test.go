package fips

import (
	"crypto/md5"  //nolint:gosec // the algorithm fips140=only refuses
	"crypto/sha1" //nolint:gosec // the algorithm fips140=only refuses
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

func TestStatus(t *testing.T) {
	tests := []struct {
		name              string
		enabled, enforced bool
		gofips140         string
		want              Status
	}{
		{"plain build", false, false, "", Status{Mode: Off}},
		{"GOFIPS140=off", false, false, "off", Status{Mode: Off}},
		{"plain build, GODEBUG on", true, false, "", Status{Mode: On}},
		{"GOFIPS140=latest", true, false, "latest", Status{Mode: On}},
		{"frozen module, default on", true, false, "v1.0.0-c2097c7c", Status{Mode: On, Module: "v1.0.0-c2097c7c"}},
		{"frozen module, GODEBUG only", true, true, "v1.0.0-c2097c7c", Status{Mode: Only, Module: "v1.0.0-c2097c7c"}},
		{"frozen module, GODEBUG off", false, false, "v1.0.0-c2097c7c", Status{Mode: Off, Module: "v1.0.0-c2097c7c"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := status(tt.enabled, tt.enforced, tt.gofips140); got != tt.want {
				t.Fatalf("status = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestStatusString(t *testing.T) {
	for s, want := range map[Status]string{
		{Mode: Only, Module: "v1.0.0-c2097c7c"}: "FIPS 140-3 mode only, Go Cryptographic Module v1.0.0-c2097c7c",
		{Mode: Off}:                             "FIPS 140-3 mode off, Go Cryptographic Module none (built without GOFIPS140)",
	} {
		if got := s.String(); got != want {
			t.Errorf("%+v.String() = %q, want %q", s, got, want)
		}
	}
}

func TestFromPanic(t *testing.T) {
	goMsg := "crypto/sha1: use of SHA-1 is not allowed in FIPS 140-only mode"
	err, ok := FromPanic(goMsg)
	if !ok || !strings.Contains(err.Error(), "SHA-1") || !IsNotApproved(err) {
		t.Fatalf("FromPanic(%q) = %v, %v", goMsg, err, ok)
	}
	if _, ok := FromPanic(errors.New(goMsg)); !ok {
		t.Fatal("an error value was not recognised")
	}
	for _, v := range []any{"index out of range", errors.New("boom"), 42, nil} {
		if _, ok := FromPanic(v); ok {
			t.Errorf("FromPanic(%v) took an unrelated panic for a refusal", v)
		}
	}
	if IsNotApproved(errors.New("boom")) || IsNotApproved(nil) {
		t.Fatal("IsNotApproved of an unrelated error")
	}
	if !IsNotApproved(fmt.Errorf("decrypt: %w", errors.New("crypto/rsa: use of PKCS#1 v1.5 encryption is not allowed in FIPS 140-only mode"))) {
		t.Fatal("IsNotApproved missed Go's returned error")
	}
}

func TestRefuseLetsOtherPanicsThrough(t *testing.T) {
	defer func() {
		if v := recover(); v != "unrelated" {
			t.Fatalf("recovered %v, want the unrelated panic", v)
		}
	}()
	func() (err error) {
		defer Refuse(&err, "work")
		panic("unrelated")
	}()
}

// TestUnderFIPS140Only runs the helper below in a child with
// GODEBUG=fips140=only: the mode is fixed at start-up, and Go honours the
// setting also in a build without GOFIPS140.
func TestUnderFIPS140Only(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperFIPS140Only$", "-test.v")
	cmd.Env = append(os.Environ(), "GODEBUG=fips140=only", "STEPFORT_FIPS_HELPER=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "PASS") {
		t.Fatalf("child with fips140=only: %v\n%s", err, out)
	}
}

func TestHelperFIPS140Only(t *testing.T) {
	if os.Getenv("STEPFORT_FIPS_HELPER") != "1" {
		t.Skip("run by TestUnderFIPS140Only")
	}
	if got := Current().Mode; got != Only {
		t.Fatalf("Current().Mode = %s under GODEBUG=fips140=only", got)
	}
	for alg, fn := range map[string]func(){
		"SHA-1": func() { sha1.Sum([]byte("x")) }, //nolint:gosec // refused below
		"MD5":   func() { md5.Sum([]byte("x")) },  //nolint:gosec // refused below
	} {
		err := func() (err error) {
			defer Refuse(&err, "hash")
			fn()
			return nil
		}()
		var na *NotApprovedError
		if !errors.As(err, &na) || !strings.Contains(err.Error(), alg) || !strings.HasPrefix(err.Error(), "hash: ") {
			t.Errorf("%s under fips140=only: %v, want a NotApprovedError naming it", alg, err)
		}
	}
	// An approved algorithm is not refused.
	if err := func() (err error) {
		defer Refuse(&err, "hash")
		sha256.Sum256([]byte("x"))
		return nil
	}(); err != nil {
		t.Fatalf("SHA-256 refused: %v", err)
	}
}
