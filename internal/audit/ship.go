package audit

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/stepfort/stepfort/config"
)

// SinkConfig ships records and checkpoints to a SIEM.
type SinkConfig struct {
	// Network is "tcp" or "udp".
	Network string `json:"network"`
	Address string `json:"address"`
	// Format is "syslog" (RFC 5424; octet-counted framing over TCP, RFC
	// 6587) or "json" (one JSON object per line; TCP only).
	Format string `json:"format"`
}

// Validate checks the sink block; field names are relative to it.
func (c *SinkConfig) Validate() error {
	switch c.Network {
	case "tcp", "udp":
	default:
		return config.Errorf("sink.network", "must be tcp or udp, got %q", c.Network)
	}
	if _, _, err := net.SplitHostPort(c.Address); err != nil {
		return config.Errorf("sink.address", "must be host:port: %v", err)
	}
	switch c.Format {
	case "syslog":
	case "json":
		if c.Network != "tcp" {
			return config.Errorf("sink.format", "json needs network tcp")
		}
	default:
		return config.Errorf("sink.format", "must be syslog or json, got %q", c.Format)
	}
	return nil
}

// shipQueue bounds what waits for a slow SIEM; beyond it messages are
// dropped and counted (the database trail stays complete).
const shipQueue = 10000

// Shipper sends records to a SIEM in the background, best effort:
// reconnecting after errors and dropping (and counting) what does not fit
// its queue. The database is the trail of record.
type Shipper struct {
	cfg     SinkConfig
	log     *slog.Logger
	q       chan []byte
	host    string
	Dropped atomic.Int64
}

// NewShipper returns a shipper; Run sends.
func NewShipper(cfg SinkConfig, log *slog.Logger) *Shipper {
	h, _ := os.Hostname()
	if h == "" {
		h = "-"
	}
	return &Shipper{cfg: cfg, log: log, q: make(chan []byte, shipQueue), host: h}
}

// Send queues a record.
func (s *Shipper) Send(e Entry) {
	b, _ := json.Marshal(e)
	s.enqueue("record", b)
}

// SendCheckpoint queues a checkpoint.
func (s *Shipper) SendCheckpoint(cp *Checkpoint) {
	b, _ := json.Marshal(map[string]any{"checkpoint": cp})
	s.enqueue("checkpoint", b)
}

func (s *Shipper) enqueue(msgID string, msg []byte) {
	var out []byte
	if s.cfg.Format == "json" {
		out = append(msg, '\n')
	} else {
		out = s.syslog(msgID, msg)
	}
	select {
	case s.q <- out:
	default:
		if s.Dropped.Add(1)%1000 == 1 {
			s.log.Warn("audit sink queue full: records dropped (the database trail is complete)", "dropped", s.Dropped.Load())
		}
	}
}

// syslog formats an RFC 5424 message: facility 13 (log audit), severity
// 6 (info): PRI 110.
func (s *Shipper) syslog(msgID string, msg []byte) []byte {
	line := fmt.Sprintf("<110>1 %s %s stepfort %d %s - ", time.Now().UTC().Format(time.RFC3339Nano), s.host, os.Getpid(), msgID)
	b := append([]byte(line), msg...)
	if s.cfg.Network == "tcp" {
		return append([]byte(strconv.Itoa(len(b))+" "), b...)
	}
	return b
}

// Run sends queued messages until stop is closed.
func (s *Shipper) Run(stop <-chan struct{}) {
	var conn net.Conn
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	for {
		var msg []byte
		select {
		case <-stop:
			return
		case msg = <-s.q:
		}
		for attempt := 0; ; attempt++ {
			if conn == nil {
				c, err := net.DialTimeout(s.cfg.Network, s.cfg.Address, 5*time.Second)
				if err != nil {
					if attempt == 0 {
						s.log.Warn("audit sink unreachable", "address", s.cfg.Address, "error", err)
					}
					select {
					case <-stop:
						return
					case <-time.After(min(time.Duration(attempt+1)*time.Second, 30*time.Second)):
					}
					continue
				}
				conn = c
			}
			_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if _, err := conn.Write(msg); err != nil {
				conn.Close()
				conn = nil
				continue
			}
			break
		}
	}
}
