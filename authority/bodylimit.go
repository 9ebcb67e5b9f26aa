package authority

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/stepfort/stepfort/internal/admin"
	"github.com/stepfort/stepfort/plugins"
)

// bodyLimit bounds every request body before any handler reads it:
// plugins.DefaultMaxBody for upstream's routes (ACME, SCEP, /sign, ...) and
// plugin routes, and under /api/v1 the largest limit an admin route
// declares (the admin server applies each route's own limit once the
// token is checked, so no unauthenticated body is read there).
//
// A body over the limit is answered 413 without calling the handler. A
// body under the default limit is read here, into memory bounded by the
// limit, so that a chunked upload without Content-Length also gets a 413
// instead of whatever error the upstream handler makes of a failed read.
type bodyLimit struct {
	next     http.Handler
	adminMax int64
}

func (b bodyLimit) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Body == nil || r.Body == http.NoBody {
		b.next.ServeHTTP(w, r)
		return
	}
	limit := int64(plugins.DefaultMaxBody)
	if strings.HasPrefix(r.URL.Path, admin.Prefix+"/") {
		limit = max(limit, b.adminMax)
	}
	if r.ContentLength > limit {
		tooLarge(w, r, limit)
		return
	}
	if limit > plugins.DefaultMaxBody {
		r.Body = http.MaxBytesReader(w, r.Body, limit)
		b.next.ServeHTTP(w, r)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	switch {
	case int64(len(body)) > limit:
		tooLarge(w, r, limit)
		return
	case err != nil:
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			tooLarge(w, r, limit)
			return
		}
		http.Error(w, "read request body: "+err.Error(), http.StatusBadRequest)
		return
	}
	_ = r.Body.Close()
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.ContentLength = int64(len(body))
	b.next.ServeHTTP(w, r)
}

// tooLarge answers 413 in the format the route's clients read: an ACME
// problem document under /acme, the admin API's JSON error elsewhere. The
// connection is closed, since the rest of the body is not read.
func tooLarge(w http.ResponseWriter, r *http.Request, limit int64) {
	w.Header().Set("Connection", "close")
	msg := fmt.Sprintf("request body larger than %d bytes", limit)
	path := strings.TrimPrefix(r.URL.Path, "/2.0")
	if strings.HasPrefix(path, "/acme/") {
		w.Header().Set("Content-Type", "application/problem+json")
		w.WriteHeader(http.StatusRequestEntityTooLarge)
		fmt.Fprintf(w, `{"type":"urn:ietf:params:acme:error:malformed","detail":%q,"status":413}`, msg)
		return
	}
	admin.WriteError(w, http.StatusRequestEntityTooLarge, "%s", msg)
}
