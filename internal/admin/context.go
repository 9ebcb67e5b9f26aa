package admin

import (
	"context"
	"net/http"
)

func contextWith(r *http.Request, t *Token) context.Context {
	return context.WithValue(r.Context(), tokenKey{}, t)
}
