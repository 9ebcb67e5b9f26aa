package dynamicscep

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the plugin's Prometheus collectors.
type metrics struct {
	challenges *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "stepfort_scep_challenges_total",
		Help: "SCEP challenges by source and result: created, withdrawn, accepted, refused_* (unknown, consumed, expired, withdrawn, provisioner, mismatch, device) and error.",
	}, []string{"source", "result"})
	if err := reg.Register(c); err != nil {
		// A second plugin instance on one registry (tests) shares the
		// counter.
		var already prometheus.AlreadyRegisteredError
		if !errors.As(err, &already) {
			return nil, err
		}
		existing, ok := already.ExistingCollector.(*prometheus.CounterVec)
		if !ok {
			return nil, err
		}
		c = existing
	}
	return &metrics{challenges: c}, nil
}

func (m *metrics) count(source, result string) {
	m.challenges.WithLabelValues(source, result).Inc()
}
