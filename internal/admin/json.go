package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
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

// ReadJSON decodes a request body strictly into v, answering itself on
// failure (it returns false then): 400 for invalid JSON, an unknown field or
// anything after the one JSON value; 413 for a body over 1 MiB.
func ReadJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		err = noTrailingData(dec)
	}
	var tooLarge *http.MaxBytesError
	switch {
	case err == nil:
		return true
	case errors.As(err, &tooLarge):
		WriteError(w, http.StatusRequestEntityTooLarge, "request body exceeds %d bytes", tooLarge.Limit)
	default:
		WriteError(w, http.StatusBadRequest, "invalid request body: %v", err)
	}
	return false
}

// noTrailingData checks that only white space follows the decoded value:
// "{...} {...}" must not be read as its first half.
func noTrailingData(dec *json.Decoder) error {
	end := dec.InputOffset()
	_, err := dec.Token()
	switch {
	case errors.Is(err, io.EOF):
		return nil
	case err != nil && !errors.As(err, new(*json.SyntaxError)):
		return err // a read error, such as the body limit
	}
	return fmt.Errorf("trailing data after the JSON value, which ends at byte %d", end)
}
