package authority

import (
	"github.com/prometheus/client_golang/prometheus"
	"log/slog"
	"time"

	upstream "github.com/smallstep/certificates/authority"
	"github.com/smallstep/nosql"
)

// host is the plugins.Host handed to one plugin.
type host struct {
	d    *Daemon
	name string
}

func (h *host) Authority() *upstream.Authority { return h.d.Authority() }
func (h *host) DB() nosql.DB                   { return h.d.store }
func (h *host) Logger() *slog.Logger           { return h.d.log.With("plugin", h.name) }
func (h *host) Now() time.Time                 { return time.Now() }
func (h *host) Metrics() prometheus.Registerer { return h.d.metrics.Registerer() }
