package inventory

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smallstep/nosql"
)

func newTestStore(t *testing.T) *Store {
	t.Helper()
	db, err := nosql.New("bbolt", filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	s, err := NewStore(db, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func ekPEM(t *testing.T) (string, string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	urn, err := EKURN(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(k.Public())
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})), urn
}

func TestEKURN(t *testing.T) {
	// Same computation as go.step.sm/crypto/tpm (*EK).Fingerprint.
	k, _ := rsa.GenerateKey(rand.Reader, 2048)
	urn, err := EKURN(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(urn, "urn:ek:sha256:") || !IsEKURN(urn) {
		t.Fatalf("bad urn %q", urn)
	}
	der, _ := x509.MarshalPKIXPublicKey(k.Public())
	for _, tt := range []struct {
		name string
		in   []byte
	}{
		{"pem", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})},
		{"der", der},
		{"base64", []byte(base64.StdEncoding.EncodeToString(der))},
	} {
		t.Run(tt.name, func(t *testing.T) {
			pub, _, err := ParseEKPublic(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if u, _ := EKURN(pub); u != urn {
				t.Fatalf("got %s want %s", u, urn)
			}
		})
	}
	if _, _, err := ParseEKPublic([]byte("garbage")); err == nil {
		t.Fatal("garbage accepted")
	}
}

func TestStoreDevices(t *testing.T) {
	s := newTestStore(t)
	ek, urn := ekPEM(t)
	if _, err := s.CreateCollection(Collection{Name: "laptops"}); err != nil {
		t.Fatal(err)
	}
	d, err := s.Create(DeviceInput{EKPublic: ek, Name: "pc1", Collection: "laptops", Identifiers: []string{"SER1"}})
	if err != nil {
		t.Fatal(err)
	}
	if d.Identifiers[0] != urn || d.Status != StatusActive || d.Source != "manual" {
		t.Fatalf("unexpected device %+v", d)
	}
	tests := []struct {
		name string
		in   DeviceInput
		want error
	}{
		{"same EK", DeviceInput{EKPublic: ek}, ErrConflict},
		{"same serial id", DeviceInput{Identifiers: []string{"SER1"}}, ErrConflict},
		{"no identifier", DeviceInput{Name: "x"}, ErrInvalid},
		{"bad status", DeviceInput{Identifiers: []string{"A"}, Status: "gone"}, ErrInvalid},
		{"unknown collection", DeviceInput{Identifiers: []string{"B"}, Collection: "nope"}, ErrInvalid},
		{"bad EK", DeviceInput{EKPublic: "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"}, ErrInvalid},
		{"ok serial only", DeviceInput{Serial: "C02XYZ"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.Create(tt.in)
			if tt.want == nil && err != nil || tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
	got, err := s.ByIdentifier(urn)
	if err != nil || got.ID != d.ID {
		t.Fatalf("ByIdentifier: %v %v", got, err)
	}
	disabled := StatusDisabled
	if _, err := s.Update(d.ID, DevicePatch{Status: &disabled, RemoveIdentifiers: []string{"SER1"}, AddIdentifiers: []string{"SER2"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ByIdentifier("SER1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("released identifier still resolves: %v", err)
	}
	if got, _ := s.ByIdentifier("SER2"); got == nil || got.Active() {
		t.Fatalf("update lost: %+v", got)
	}
	if err := s.DeleteCollection("laptops"); !errors.Is(err, ErrConflict) {
		t.Fatalf("deleted a non-empty collection: %v", err)
	}
	if _, err := s.Delete(d.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ByIdentifier(urn); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted device resolves: %v", err)
	}
	if _, err := s.Create(DeviceInput{EKPublic: ek}); err != nil {
		t.Fatalf("EK not reusable after delete: %v", err)
	}
}

func TestListPagination(t *testing.T) {
	s := newTestStore(t)
	for i := range 25 {
		owner := "alice"
		if i%2 == 1 {
			owner = "bob"
		}
		if _, err := s.Create(DeviceInput{Identifiers: []string{fmt.Sprintf("S%02d", i)}, Owner: owner}); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	cursor := ""
	pages := 0
	for {
		devs, next, err := s.List(ListOptions{Owner: "alice", Limit: 5, Cursor: cursor})
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, d := range devs {
			if d.Owner != "alice" || seen[d.ID] {
				t.Fatalf("bad page entry %+v", d)
			}
			seen[d.ID] = true
		}
		if next == "" {
			break
		}
		cursor = next
	}
	if len(seen) != 13 || pages != 3 {
		t.Fatalf("got %d devices in %d pages", len(seen), pages)
	}
}
