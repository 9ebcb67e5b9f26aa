package main

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"os"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/smallstep/certificates/authority"
	upconfig "github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/db"
	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"

	"github.com/stepfort/stepfort/certstatus"
	"github.com/stepfort/stepfort/ha"
)

// The CRL part runs in a child process (this binary with -crl-child) so that
// its RSS is not mixed with the load generator's or the other parts' heap.

// benchHost is the plugins.Host the publisher needs: an upstream authority
// (for the intermediate and its signer) over a bbolt database.
type benchHost struct {
	auth  *authority.Authority
	store nosql.DB
	reg   *prometheus.Registry
}

func (h *benchHost) Authority() *authority.Authority { return h.auth }
func (h *benchHost) DB() nosql.DB                    { return h.store }
func (h *benchHost) Logger() *slog.Logger            { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
func (h *benchHost) Now() time.Time                  { return time.Now() }
func (h *benchHost) Metrics() prometheus.Registerer  { return h.reg }

// crlStep is the measurement of one CRL publication at a table size.
type crlStep struct {
	Entries     int     `json:"entries"`
	PopulateSec float64 `json:"populateSec"` // time to add the rows of this step
	PublishSec  float64 `json:"publishSec"`
	CRLBytes    int     `json:"crlBytes"`
	CRLEntries  int     `json:"crlEntries"`
	RSSBefore   float64 `json:"rssBeforeMiB"`  // VmRSS before Publish (after GC)
	PeakDuring  float64 `json:"peakDuringMiB"` // VmHWM, reset before Publish
	RSSAfter    float64 `json:"rssAfterMiB"`
	HWMReset    bool    `json:"hwmReset"` // false: VmHWM could not be reset, peak is process-wide
	ListSec     float64 `json:"listSec"`  // store.List of the table alone
	ListPeak    float64 `json:"listPeakMiB"`
	DecodeSec   float64 `json:"decodeSec"` // JSON decode + serial parse of the listed rows
	SignSec     float64 `json:"signSec"`   // x509.CreateRevocationList alone
	DBBytes     int64   `json:"dbBytes"`
}

// crlChild populates revoked_x509_certs in a fresh bbolt file up to each
// size in sizes and publishes a CRL through ha.Publisher at each.
func crlChild(caConfig, password, dbPath string, sizes []int) error {
	cfg, err := upconfig.LoadConfiguration(caConfig)
	if err != nil {
		return fmt.Errorf("load %s: %w", caConfig, err)
	}
	cfg.CRL = nil // upstream's own CRL generation would List the table too
	_ = os.Remove(dbPath)
	adb, err := db.New(&db.Config{Type: "bbolt", DataSource: dbPath})
	if err != nil {
		return fmt.Errorf("open bbolt: %w", err)
	}
	store := adb.(*db.DB).DB
	defer store.Close()
	auth, err := authority.New(cfg, authority.WithDatabase(adb), authority.WithPassword([]byte(password)), authority.WithQuietInit())
	if err != nil {
		return fmt.Errorf("authority: %w", err)
	}
	h := &benchHost{auth: auth, store: store, reg: prometheus.NewRegistry()}
	pub, err := ha.NewPublisher(h, "bench", "http://localhost/1.0/crl", 24*time.Hour, 5*time.Second, 15*time.Second)
	if err != nil {
		return fmt.Errorf("publisher: %w", err)
	}
	if err := store.CreateTable(certstatus.RevokedCertsTable); err != nil {
		return err
	}
	now := time.Now().UTC()
	have := 0
	for _, n := range sizes {
		st := crlStep{Entries: n}
		t0 := time.Now()
		const batch = 100_000
		for have < n {
			tx := &database.Tx{Operations: make([]*database.TxEntry, 0, batch)}
			for ; have < n && len(tx.Operations) < batch; have++ {
				// Increasing 128-bit serials (bbolt appends fastest in key
				// order; the publisher does not care about the order).
				sn := new(big.Int).Lsh(big.NewInt(1), 126)
				sn.Add(sn, big.NewInt(int64(have)*1_000_003))
				b, _ := json.Marshal(&db.RevokedCertificateInfo{
					Serial: sn.String(), ProvisionerID: "bench-provisioner-id", ReasonCode: 1, Reason: "bench",
					RevokedAt: now, ExpiresAt: now.Add(30 * 24 * time.Hour), TokenID: "bench-token-id",
				})
				tx.Set(certstatus.RevokedCertsTable, []byte(sn.String()), b)
			}
			if err := store.Update(tx); err != nil {
				return fmt.Errorf("populate: %w", err)
			}
		}
		st.PopulateSec = time.Since(t0).Seconds()
		if fi, err := os.Stat(dbPath); err == nil {
			st.DBBytes = fi.Size()
		}
		runtime.GC()
		debug.FreeOSMemory()
		st.RSSBefore, _, _ = procMemory("self")
		st.HWMReset = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil

		t0 = time.Now()
		if err := pub.Publish(); err != nil {
			return fmt.Errorf("publish %d entries: %w", n, err)
		}
		st.PublishSec = time.Since(t0).Seconds()
		st.RSSAfter, st.PeakDuring, _ = procMemory("self")

		// Check what was stored (outside the measurement).
		row, err := store.Get([]byte("x509_crl"), []byte("crl"))
		if err != nil {
			return fmt.Errorf("read published CRL: %w", err)
		}
		var info db.CertificateRevocationListInfo
		if err := json.Unmarshal(row, &info); err != nil {
			return err
		}
		st.CRLBytes = len(info.DER)
		st.CRLEntries, err = countCRLEntries(info.DER)
		if err != nil {
			return err
		}
		row, info = nil, db.CertificateRevocationListInfo{}
		_ = row

		// The table scan alone (what the publisher does first).
		runtime.GC()
		debug.FreeOSMemory()
		_ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
		t0 = time.Now()
		rows, err := store.List(certstatus.RevokedCertsTable)
		if err != nil {
			return err
		}
		st.ListSec = time.Since(t0).Seconds()
		_, st.ListPeak, _ = procMemory("self")
		if len(rows) != n {
			return fmt.Errorf("table has %d rows, want %d", len(rows), n)
		}
		// Breakdown of the rest of Publish, repeated outside it: decoding
		// the rows (as ha.Publisher does) and signing the CRL.
		t0 = time.Now()
		entries := make([]x509.RevocationListEntry, 0, len(rows))
		for _, row := range rows {
			var rci db.RevokedCertificateInfo
			if err := json.Unmarshal(row.Value, &rci); err != nil {
				return err
			}
			sn, _ := new(big.Int).SetString(rci.Serial, 10)
			entries = append(entries, x509.RevocationListEntry{SerialNumber: sn, RevocationTime: rci.RevokedAt, ReasonCode: rci.ReasonCode})
		}
		st.DecodeSec = time.Since(t0).Seconds()
		rows = nil
		_ = rows
		signer, err := auth.GetX509Signer()
		if err != nil {
			return err
		}
		t0 = time.Now()
		if _, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(1), ThisUpdate: now, NextUpdate: now.Add(time.Hour),
			RevokedCertificateEntries: entries}, auth.GetIntermediateCertificates()[0], signer); err != nil {
			return err
		}
		st.SignSec = time.Since(t0).Seconds()
		entries = nil
		_ = entries

		b, _ := json.Marshal(st)
		fmt.Printf("CRLSTEP %s\n", b)
		runtime.GC()
		debug.FreeOSMemory()
	}
	return nil
}

// countCRLEntries parses the CRL (checking it is well formed) and counts
// its entries.
func countCRLEntries(der []byte) (int, error) {
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return 0, fmt.Errorf("parse published CRL: %w", err)
	}
	return len(crl.RevokedCertificateEntries), nil
}
