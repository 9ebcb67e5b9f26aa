package ui

import (
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
)

type collectionView struct {
	Name        string    `json:"name"`
	Description string    `json:"description"`
	DeviceType  string    `json:"deviceType"`
	CreatedAt   time.Time `json:"createdAt"`
}

type collectionsPage struct {
	Collections []collectionView
}

// collections lists the device collections (GET /api/v1/collections: all
// of them; collections are groups an admin creates, not a fleet).
func (s *Server) collections(w http.ResponseWriter, r *http.Request) {
	d := &collectionsPage{}
	p := &page{Title: "Device collections", Nav: "devices", Data: d}
	var list struct {
		Collections []collectionView `json:"collections"`
	}
	if res := s.call(r, http.MethodGet, "/api/v1/collections", nil, &list); !res.ok() {
		s.apiFailed(w, r, res, "collections", p)
		return
	}
	d.Collections = list.Collections
	s.render(w, r, http.StatusOK, "collections", p)
}

const collectionsPath = Prefix + "/devices/collections"

func (s *Server) addCollection(w http.ResponseWriter, r *http.Request) {
	body := map[string]any{}
	for form, field := range map[string]string{"name": "name", "description": "description", "deviceType": "deviceType"} {
		if v := strings.TrimSpace(r.PostFormValue(form)); v != "" {
			body[field] = v
		}
	}
	res := s.call(r, http.MethodPost, "/api/v1/collections", body, nil)
	switch {
	case res.status == http.StatusUnauthorized:
		s.apiFailed(w, r, res, "collections", &page{})
	case !res.ok():
		s.redirectFlash(w, r, collectionsPath, "Collection not added: "+res.err)
	default:
		s.redirectFlash(w, r, collectionsPath, "Collection "+body["name"].(string)+" added.")
	}
}

// removeCollection deletes an empty collection; the API refuses one that
// still has devices, and the page shows why.
func (s *Server) removeCollection(w http.ResponseWriter, r *http.Request) {
	name := chi.URLParam(r, "name")
	res := s.call(r, http.MethodDelete, "/api/v1/collections/"+url.PathEscape(name), nil, nil)
	switch {
	case res.status == http.StatusUnauthorized:
		s.apiFailed(w, r, res, "collections", &page{})
	case !res.ok():
		s.redirectFlash(w, r, collectionsPath, "Collection not removed: "+res.err)
	default:
		s.redirectFlash(w, r, collectionsPath, "Collection "+name+" removed.")
	}
}
