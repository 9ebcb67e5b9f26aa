package adminapi

import (
	"context"
	"net/http"

	"github.com/stepfort/stepfort/admintoken"
)

func contextWith(r *http.Request, t *admintoken.Token) context.Context {
	return context.WithValue(r.Context(), tokenKey{}, t)
}
