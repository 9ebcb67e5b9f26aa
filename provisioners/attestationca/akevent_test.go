package attestationca

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/stepfort/stepfort/internal/events"
	"github.com/stepfort/stepfort/internal/testenv"
	"github.com/stepfort/stepfort/plugins"
	"github.com/stepfort/stepfort/plugins/plugintest"
)

// issueAK runs /attest and /secret for a registered soft TPM and returns
// the /secret answer.
func issueAK(t *testing.T, c *floodCA) (*softTPM, string, *http.Response, []byte) {
	t.Helper()
	s := newSoftTPM(t)
	urn := c.register(t, s)
	rec, secret := c.attest(t, s, s.body)
	if rec.Code != http.StatusOK {
		t.Fatalf("/attest: %d %s", rec.Code, rec.Body)
	}
	out := c.secret(secret)
	return s, urn, out.Result(), out.Body.Bytes()
}

func akCertificate(t *testing.T, body []byte) *x509.Certificate {
	t.Helper()
	var sr SecretResponse
	if err := json.Unmarshal(body, &sr); err != nil || len(sr.CertificateChain) == 0 {
		t.Fatalf("secret response %s: %v", body, err)
	}
	c, err := x509.ParseCertificate(sr.CertificateChain[0])
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestAKCertificateEvent: every AK certificate handed out has an issued
// event naming the Attestation CA and the device's EK URN, announced after
// it is recorded.
func TestAKCertificateEvent(t *testing.T) {
	c := newFloodCA(t, testenv.OpenStore(t, "bbolt"), "bbolt", "")
	_, urn, resp, body := issueAK(t, c)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/secret: %d %s", resp.StatusCode, body)
	}
	cert := akCertificate(t, body)
	rec := c.host.Recorder.(*plugintest.Recorder)
	if len(rec.Certificates) != 1 {
		t.Fatalf("%d certificate events, want 1", len(rec.Certificates))
	}
	ev := rec.Certificates[0]
	want := plugins.ProvisionerRef{Name: Name, Type: plugins.ProvisionerTypeAttestationCA}
	if ev.Kind != plugins.EventIssued || ev.Serial != cert.SerialNumber.String() || string(ev.CertificateDER) != string(cert.Raw) ||
		ev.Provisioner == nil || *ev.Provisioner != want || ev.PermanentIdentifier != urn {
		t.Fatalf("event %+v, want issued %s by %+v for %s", ev, cert.SerialNumber, want, urn)
	}
	if !slices.Contains(rec.Announced, ev.ID) {
		t.Fatalf("event %s not announced (%v)", ev.ID, rec.Announced)
	}
}

// TestAKCertificateNotAnsweredWithoutEvent: fail closed when the event
// cannot be recorded.
func TestAKCertificateNotAnsweredWithoutEvent(t *testing.T) {
	c := newFloodCA(t, testenv.OpenStore(t, "bbolt"), "bbolt", "")
	c.host.Recorder.(*plugintest.Recorder).Fail = errors.New("database down")
	_, _, resp, body := issueAK(t, c)
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), codeUnavailable) || strings.Contains(string(body), "certificateChain") {
		t.Fatalf("/secret = %d %s, want 503 %s without a certificate", resp.StatusCode, body, codeUnavailable)
	}
}

type certObserver struct{ got chan plugins.CertificateEvent }

func (o certObserver) ObserveCertificate(_ context.Context, ev plugins.CertificateEvent) error {
	o.got <- ev
	return nil
}

// TestAKCertificateEventCommitted: with the daemon's recorder the event is
// committed to the events table before /secret answers, on both backends,
// and the outbox delivers it to a certificate observer.
func TestAKCertificateEventCommitted(t *testing.T) {
	for _, backend := range testenv.Backends {
		t.Run(backend, func(t *testing.T) {
			db := testenv.OpenStore(t, backend)
			obs := certObserver{got: make(chan plugins.CertificateEvent, 1)}
			ob := events.NewOutbox(db, []events.Observer{{Name: "index", Certificate: obs}}, events.OutboxOptions{Replica: "a"})
			r, err := events.NewRecorder(db, ob, nil)
			if err != nil {
				t.Fatal(err)
			}
			cfg := testConfig(t)
			host := plugintest.NewHostWithDB(t, db, backend)
			host.Recorder = r
			p, err := New(cfg, host)
			if err != nil {
				t.Fatal(err)
			}
			router := chi.NewRouter()
			p.Routes(router)
			c := &floodCA{p: p, host: host, db: db, r: router}
			_, _, resp, body := issueAK(t, c)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("/secret: %d %s", resp.StatusCode, body)
			}
			cert := akCertificate(t, body)
			if n := rows(t, db, events.Table); n != 1 {
				t.Fatalf("%d rows in %s when /secret answered, want 1", n, events.Table)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go ob.Run(ctx)
			var ev plugins.CertificateEvent
			select {
			case ev = <-obs.got:
			case <-time.After(20 * time.Second):
				t.Fatal("event not delivered")
			}
			if ev.Serial != cert.SerialNumber.String() || ev.Provisioner.Type != plugins.ProvisionerTypeAttestationCA {
				t.Fatalf("observer got %+v", ev)
			}
		})
	}
}

// TestNewNeedsCertificateEvents: a host whose recorder cannot record
// certificate events is refused at start (an AK certificate must never
// leave without its event).
func TestNewNeedsCertificateEvents(t *testing.T) {
	host := plugintest.NewHost(t)
	host.Recorder = struct{ plugins.EventRecorder }{host.Recorder}
	if p, err := New(testConfig(t), host); err == nil || !strings.Contains(err.Error(), "CertificateEventRecorder") || p != nil {
		t.Fatalf("New = %v, %v; want an error naming CertificateEventRecorder", p, err)
	}
}
