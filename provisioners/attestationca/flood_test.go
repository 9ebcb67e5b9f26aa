package attestationca

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"

	"github.com/stepfort/stepfort/internal/storage"
	"github.com/stepfort/stepfort/internal/testenv"
	"github.com/stepfort/stepfort/plugins/plugintest"
	"github.com/stepfort/stepfort/provisioners/inventory"
)

// floodCA is an Attestation CA on a real store, with devices registered by
// soft TPMs. Its sessionTTL is long so nothing expires unless the test
// moves the clock.
type floodCA struct {
	p    *Plugin
	host *plugintest.Host
	db   nosql.DB
	r    chi.Router
}

// newFloodCA builds the plugin with the JSON settings in extra merged into
// the test configuration.
func newFloodCA(t *testing.T, db nosql.DB, backend, extra string) *floodCA {
	t.Helper()
	cfg := testConfig(t)
	if err := json.Unmarshal([]byte(`{"sessionTTL":"5m"}`), cfg); err != nil {
		t.Fatal(err)
	}
	if extra != "" {
		if err := json.Unmarshal([]byte(extra), cfg); err != nil {
			t.Fatal(err)
		}
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	host := plugintest.NewHostWithDB(t, db, backend)
	p, err := New(cfg, host)
	if err != nil {
		t.Fatal(err)
	}
	r := chi.NewRouter()
	p.Routes(r)
	return &floodCA{p: p, host: host, db: db, r: r}
}

// register adds the soft TPM's EK to the inventory and returns its URN.
func (c *floodCA) register(t *testing.T, s *softTPM) string {
	t.Helper()
	inv, err := inventory.NewStore(c.db, c.host.Now)
	if err != nil {
		t.Fatal(err)
	}
	d, err := inv.Create(inventory.DeviceInput{EKPublic: s.ekPEM(t), Name: "soft"})
	if err != nil {
		t.Fatal(err)
	}
	return d.Identifiers[0]
}

func (c *floodCA) do(path string, body []byte) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	c.r.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, path, strings.NewReader(string(body))))
	return rec
}

// attest posts body to /attest and returns the activated secret on 200.
func (c *floodCA) attest(t *testing.T, s *softTPM, body []byte) (*httptest.ResponseRecorder, []byte) {
	t.Helper()
	rec := c.do("/attestation/attest", body)
	if rec.Code != http.StatusOK {
		return rec, nil
	}
	var ar AttestResponse
	if err := json.Unmarshal(rec.Body.Bytes(), &ar); err != nil {
		t.Fatal(err)
	}
	return rec, s.activate(t, ar)
}

func (c *floodCA) secret(secret []byte) *httptest.ResponseRecorder {
	b, _ := json.Marshal(SecretRequest{Secret: secret})
	return c.do("/attestation/secret", b)
}

// sessionsOf counts the stored sessions that name ekURN.
func sessionsOf(t *testing.T, db nosql.DB, ekURN string) int {
	t.Helper()
	n := 0
	err := storage.ForEach(db, SessionsTable, func(_, v []byte) error {
		var s struct {
			EKURN string `json:"ekURN"`
		}
		if json.Unmarshal(v, &s) == nil && s.EKURN == ekURN {
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func rows(t *testing.T, db nosql.DB, table []byte) int {
	t.Helper()
	n := 0
	if err := storage.ForEach(db, table, func(_, _ []byte) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestAttestReplayKeepsOneSession: replaying one /attest body for a
// registered EK (EK public keys are not secret) leaves at most one stored
// session for that EK, and only the latest secret redeems it; every earlier
// one is refused.
func TestAttestReplayKeepsOneSession(t *testing.T) {
	for _, backend := range testenv.Backends {
		t.Run(backend, func(t *testing.T) {
			c := newFloodCA(t, testenv.OpenStore(t, backend), backend, `{"rateLimit":{"perEK":{"burst":100}}}`)
			s := newSoftTPM(t)
			urn := c.register(t, s)
			const replays = 10
			var secrets [][]byte
			for i := range replays {
				rec, secret := c.attest(t, s, s.body)
				if rec.Code != http.StatusOK {
					t.Fatalf("replay %d: %d %s", i, rec.Code, rec.Body)
				}
				secrets = append(secrets, secret)
			}
			if n := sessionsOf(t, c.db, urn); n != 1 {
				t.Fatalf("%d stored sessions for one EK after %d replays, want 1", n, replays)
			}
			if n := rows(t, c.db, []byte("stepfort_attestation_secrets")); n > 1 {
				t.Fatalf("%d secret references after %d replays, want at most 1", n, replays)
			}
			for i, secret := range secrets[:replays-1] {
				if rec := c.secret(secret); rec.Code != http.StatusForbidden {
					t.Fatalf("replaced secret %d: %d %s, want 403", i, rec.Code, rec.Body)
				}
			}
			if rec := c.secret(secrets[replays-1]); rec.Code != http.StatusOK {
				t.Fatalf("latest secret: %d %s", rec.Code, rec.Body)
			}
			if rec := c.secret(secrets[replays-1]); rec.Code != http.StatusForbidden || !strings.Contains(rec.Body.String(), codeReplayed) {
				t.Fatalf("latest secret again: %d %s, want 403 %s", rec.Code, rec.Body, codeReplayed)
			}
		})
	}
}

// TestAttestConcurrentReplicas: two Attestation CAs on one database (two
// replicas) replaying the same body concurrently still keep one session,
// and exactly one of all the secrets they handed out redeems it.
func TestAttestConcurrentReplicas(t *testing.T) {
	for _, backend := range testenv.Backends {
		t.Run(backend, func(t *testing.T) {
			db := testenv.OpenStore(t, backend)
			limits := `{"rateLimit":{"perEK":{"burst":100},"global":{"perSecond":1000,"burst":1000}}}`
			a, b := newFloodCA(t, db, backend, limits), newFloodCA(t, db, backend, limits)
			s := newSoftTPM(t)
			urn := a.register(t, s)
			var mu sync.Mutex
			var secrets [][]byte
			var wg sync.WaitGroup
			for i := range 16 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c := []*floodCA{a, b}[i%2]
					rec, secret := c.attest(t, s, s.body)
					mu.Lock()
					defer mu.Unlock()
					if rec.Code == http.StatusOK {
						secrets = append(secrets, secret)
					} else if rec.Code != http.StatusServiceUnavailable && rec.Code != http.StatusTooManyRequests {
						t.Errorf("/attest: %d %s", rec.Code, rec.Body)
					}
				}()
			}
			wg.Wait()
			if n := sessionsOf(t, db, urn); n != 1 {
				t.Fatalf("%d stored sessions for one EK, want 1", n)
			}
			redeemed := 0
			for i, secret := range secrets {
				rec := []*floodCA{a, b}[i%2].secret(secret)
				switch rec.Code {
				case http.StatusOK:
					redeemed++
				case http.StatusForbidden:
				default:
					t.Fatalf("/secret: %d %s", rec.Code, rec.Body)
				}
			}
			if len(secrets) == 0 || redeemed != 1 {
				t.Fatalf("%d of %d secrets redeemed, want exactly 1", redeemed, len(secrets))
			}
		})
	}
}

// TestAttestRateLimit: past its burst an EK gets 429 with Retry-After until
// the interval passes; the global limit answers 429 across EKs.
func TestAttestRateLimit(t *testing.T) {
	for _, backend := range testenv.Backends {
		t.Run(backend, func(t *testing.T) {
			c := newFloodCA(t, testenv.OpenStore(t, backend), backend, `{"rateLimit":{"perEK":{"burst":2,"interval":"1m"}}}`)
			s := newSoftTPM(t)
			c.register(t, s)
			for i := range 2 {
				if rec, _ := c.attest(t, s, s.body); rec.Code != http.StatusOK {
					t.Fatalf("attest %d within the burst: %d %s", i, rec.Code, rec.Body)
				}
			}
			rec, _ := c.attest(t, s, s.body)
			if rec.Code != http.StatusTooManyRequests || !strings.Contains(rec.Body.String(), "rate_limited") {
				t.Fatalf("past the burst: %d %s, want 429 rate_limited", rec.Code, rec.Body)
			}
			if ra, err := strconv.Atoi(rec.Header().Get("Retry-After")); err != nil || ra < 1 || ra > 60 {
				t.Fatalf("Retry-After %q, want 1..60 seconds", rec.Header().Get("Retry-After"))
			}
			c.host.Advance(time.Minute)
			if rec, _ := c.attest(t, s, s.body); rec.Code != http.StatusOK {
				t.Fatalf("after the interval: %d %s", rec.Code, rec.Body)
			}
		})
	}
	t.Run("global", func(t *testing.T) {
		c := newFloodCA(t, testenv.OpenStore(t, "bbolt"), "bbolt", `{"rateLimit":{"global":{"perSecond":1,"burst":1}}}`)
		s1, s2 := newSoftTPM(t), newSoftTPM(t)
		c.register(t, s1)
		c.register(t, s2)
		if rec, _ := c.attest(t, s1, s1.body); rec.Code != http.StatusOK {
			t.Fatalf("first: %d %s", rec.Code, rec.Body)
		}
		rec, _ := c.attest(t, s2, s2.body)
		if rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") == "" {
			t.Fatalf("second EK within the same second: %d %s (Retry-After %q), want 429", rec.Code, rec.Body, rec.Header().Get("Retry-After"))
		}
	})
}

// countingDB counts write transactions and refuses List, which copies the
// whole table into memory. storage.ForEach unwraps it (DB field).
type countingDB struct {
	nosql.DB
	mu      sync.Mutex
	txs     int
	maxOps  int
	deletes int
}

func (d *countingDB) List([]byte) ([]*database.Entry, error) {
	return nil, errors.New("List loads the whole table; stream it")
}

func (d *countingDB) Del(b, k []byte) error {
	d.mu.Lock()
	d.deletes++
	d.mu.Unlock()
	return d.DB.Del(b, k)
}

func (d *countingDB) Update(tx *database.Tx) error {
	d.mu.Lock()
	d.txs++
	d.maxOps = max(d.maxOps, len(tx.Operations))
	d.mu.Unlock()
	return d.DB.Update(tx)
}

// TestPurgeBatches: thousands of expired sessions are purged by streaming
// the table and deleting in bounded transactions, not one row per
// statement after loading the whole table; live sessions stay.
func TestPurgeBatches(t *testing.T) {
	for _, backend := range testenv.Backends {
		t.Run(backend, func(t *testing.T) {
			raw := testenv.OpenStore(t, backend)
			db := &countingDB{DB: raw}
			s, err := NewSessionStore(db)
			if err != nil {
				t.Fatal(err)
			}
			now := time.Now()
			const expired, live = 2000, 5
			var load database.Tx
			for i := range expired + live {
				exp := now.Add(-time.Hour)
				if i >= expired {
					exp = now.Add(time.Hour)
				}
				v, _ := json.Marshal(map[string]any{"ekURN": fmt.Sprintf("urn:ek:%d", i), "expiresAt": exp})
				load.Set(SessionsTable, []byte(fmt.Sprintf("%064x", i)), v)
			}
			if err := raw.Update(&load); err != nil {
				t.Fatal(err)
			}
			n, err := s.Purge(now, time.Minute)
			if err != nil {
				t.Fatalf("purge: %v", err)
			}
			if n != expired {
				t.Fatalf("purged %d, want %d", n, expired)
			}
			if left := rows(t, raw, SessionsTable); left != live {
				t.Fatalf("%d rows left, want the %d live ones", left, live)
			}
			if db.deletes != 0 || db.txs < 2 || db.maxOps > 1000 {
				t.Fatalf("purge used %d single deletes and %d transactions of up to %d operations; want batches", db.deletes, db.txs, db.maxOps)
			}
		})
	}
}
