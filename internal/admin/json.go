package admin

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
)

// maxBody bounds request bodies; bulk imports set their own, larger limit.
const maxBody = 1 << 20

// Error is the JSON body of every error response.
type Error struct {
	Status  int    `json:"status"`
	Error   string `json:"error"`
	Message string `json:"message"`
}

// WriteError writes a JSON error with the given status.
func WriteError(w http.ResponseWriter, status int, format string, args ...any) {
	WriteJSON(w, status, Error{Status: status, Error: strings.ToLower(strings.ReplaceAll(http.StatusText(status), " ", "_")), Message: fmt.Sprintf(format, args...)})
}

// WriteJSON writes v as JSON with the given status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// ReadJSON decodes a request body strictly into v, answering 400 itself on
// failure (it returns false then).
func ReadJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		WriteError(w, http.StatusBadRequest, "invalid request body: %v", err)
		return false
	}
	return true
}
