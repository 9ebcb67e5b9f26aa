package admin

import (
	"net/http"
	"time"

	"github.com/smallstep/nosql"

	"github.com/stepfort/stepfort/internal/storage"
	"github.com/stepfort/stepfort/plugins"
)

// ScopeReplicas reads the cluster's replicas: their ids name hosts and
// addresses, which the unauthenticated /health keeps to an opaque tag.
const ScopeReplicas = "health:read"

// Replicas serves GET /api/v1/replicas from the heartbeats every replica
// writes to the shared database (storage.Heartbeat). The daemon adds it
// like a plugin, so it mounts with the other admin routes.
type Replicas struct {
	DB         nosql.DB
	Now        func() time.Time
	Self       string        // this replica's id
	StaleAfter time.Duration // a row older than this is stale
}

// Name implements plugins.Plugin.
func (*Replicas) Name() string { return "replicas" }

// AdminRoutes implements plugins.AdminRouteProvider.
func (r *Replicas) AdminRoutes() []plugins.AdminRoute {
	return []plugins.AdminRoute{{Method: http.MethodGet, Pattern: "/replicas", Scope: ScopeReplicas, Handler: http.HandlerFunc(r.list)}}
}

// ReplicaView is one row of GET /api/v1/replicas.
type ReplicaView struct {
	storage.Heartbeat
	// Self: the replica that answered.
	Self bool `json:"self"`
}

// ReplicasResponse is the body of GET /api/v1/replicas.
type ReplicasResponse struct {
	Replicas   []ReplicaView `json:"replicas"`
	StaleAfter string        `json:"staleAfter"`
}

func (r *Replicas) list(w http.ResponseWriter, _ *http.Request) {
	hbs, err := storage.ListHeartbeats(r.DB, r.Now(), r.StaleAfter)
	if err != nil {
		WriteError(w, http.StatusServiceUnavailable, "list replicas: %v", err)
		return
	}
	out := ReplicasResponse{Replicas: make([]ReplicaView, 0, len(hbs)), StaleAfter: r.StaleAfter.String()}
	for _, hb := range hbs {
		out.Replicas = append(out.Replicas, ReplicaView{Heartbeat: hb, Self: hb.ID == r.Self})
	}
	WriteJSON(w, http.StatusOK, out)
}

var _ plugins.AdminRouteProvider = (*Replicas)(nil)
