package inventory

import (
	"testing"
	"time"
)

func TestCertLists(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			lists, err := NewCertLists(openDB(t, backend), []byte("stepfort_test_certlists"))
			if err != nil {
				t.Fatal(err)
			}
			exp := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
			for _, serial := range []string{"1", "2", "1"} { // the second "1" is a redelivery
				if err := lists.Add("dev", DeviceCert{Serial: serial, Kind: "device", NotAfter: exp}); err != nil {
					t.Fatal(err)
				}
			}
			if err := lists.MarkRevoked("dev", []string{"2", "unknown"}); err != nil {
				t.Fatal(err)
			}
			got, raw, err := lists.Get("dev")
			if err != nil || raw == nil || len(got.Certs) != 2 {
				t.Fatalf("list %+v, %v", got, err)
			}
			if got.Certs[0].Revoked || !got.Certs[1].Revoked || !got.Certs[0].NotAfter.Equal(exp) {
				t.Fatalf("entries %+v", got.Certs)
			}
			if none, raw, err := lists.Get("other"); err != nil || raw != nil || len(none.Certs) != 0 {
				t.Fatalf("a device without a list: %+v %q %v", none, raw, err)
			}
		})
	}
}
