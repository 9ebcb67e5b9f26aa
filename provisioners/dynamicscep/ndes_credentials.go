package dynamicscep

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/crypto/bcrypt"

	"github.com/stepfort/stepfort/config"
)

// Limits of the HTTP Basic credentials of the Jamf webhook and the NDES
// page.
const (
	maxUsernameLen   = 256
	minPlainPassword = 12   // a plain password shorter than this is refused at start
	maxPasswordFile  = 4096 // bytes read from a passwordFile
)

// credential is one username and the password it must present, read from
// a passwordFile at start: a bcrypt hash ($2a$, $2b$, $2y$) or the
// password itself.
type credential struct {
	username string
	userSum  [32]byte
	hash     []byte   // bcrypt hash, or nil
	plainSum [32]byte // SHA-256 of a plain password
}

// loadCredential checks username and reads passwordFile; errors name
// path (the JSON path of the object holding both).
func loadCredential(path, username, passwordFile string) (*credential, error) {
	switch {
	case username == "":
		return nil, config.Errorf(path+".username", "required")
	case len(username) > maxUsernameLen:
		return nil, config.Errorf(path+".username", "must be at most %d bytes", maxUsernameLen)
	case strings.ContainsAny(username, ":\r\n\x00"):
		return nil, config.Errorf(path+".username", "must not contain ':' or control characters (HTTP Basic cannot carry them)")
	case passwordFile == "":
		return nil, config.Errorf(path+".passwordFile", "required")
	case !filepath.IsAbs(passwordFile):
		return nil, config.Errorf(path+".passwordFile", "must be absolute, got %q", passwordFile)
	}
	b, err := readSmallFile(passwordFile)
	if err != nil {
		return nil, config.Errorf(path+".passwordFile", "%v", err)
	}
	// Only the line ending goes: a password may begin or end with spaces.
	b = bytes.TrimRight(b, "\r\n")
	c := &credential{username: username, userSum: sha256.Sum256([]byte(username))}
	if isBcrypt(b) {
		if _, err := bcrypt.Cost(b); err != nil {
			return nil, config.Errorf(path+".passwordFile", "not a valid bcrypt hash: %v", err)
		}
		c.hash = b
		return c, nil
	}
	if len(b) < minPlainPassword {
		return nil, config.Errorf(path+".passwordFile", "a plain password must be at least %d bytes (or store a bcrypt hash)", minPlainPassword)
	}
	c.plainSum = sha256.Sum256(b)
	return c, nil
}

func readSmallFile(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxPasswordFile+1))
	if err != nil {
		return nil, err
	}
	n := len(b)
	if n > maxPasswordFile {
		return nil, fmt.Errorf("larger than %d bytes", maxPasswordFile)
	}
	if n == 0 {
		return nil, fmt.Errorf("file is empty")
	}
	return b, nil
}

func isBcrypt(b []byte) bool {
	for _, p := range []string{"$2a$", "$2b$", "$2y$"} {
		if bytes.HasPrefix(b, []byte(p)) {
			return true
		}
	}
	return false
}

// bcryptSlots bounds concurrent bcrypt comparisons, so a flood of wrong
// passwords costs at most this many cores.
var bcryptSlots = make(chan struct{}, max(1, runtime.NumCPU()/2))

// userMatches compares the username in constant time.
func (c *credential) userMatches(username string) bool {
	sum := sha256.Sum256([]byte(username))
	return subtle.ConstantTimeCompare(sum[:], c.userSum[:]) == 1
}

// passwordMatches compares the password: bcrypt, or SHA-256 digests in
// constant time.
func (c *credential) passwordMatches(ctx context.Context, password string) bool {
	if c.hash == nil {
		sum := sha256.Sum256([]byte(password))
		return subtle.ConstantTimeCompare(sum[:], c.plainSum[:]) == 1
	}
	select {
	case bcryptSlots <- struct{}{}:
	case <-ctx.Done():
		return false
	}
	defer func() { <-bcryptSlots }()
	return bcrypt.CompareHashAndPassword(c.hash, []byte(password)) == nil
}

// authenticate returns the credential of creds that the request's HTTP
// Basic authorization names and proves, or nil. Every username is
// compared, so the time taken does not say which exists.
func authenticate(r *http.Request, creds []*credential) *credential {
	user, pass, ok := r.BasicAuth()
	if !ok || len(user) > maxUsernameLen || len(pass) > maxPasswordFile {
		return nil
	}
	var found *credential
	for _, c := range creds {
		if c.userMatches(user) && found == nil {
			found = c
		}
	}
	if found == nil || !found.passwordMatches(r.Context(), pass) {
		return nil
	}
	return found
}

// unauthorized answers 401 with a Basic challenge for realm.
func unauthorized(w http.ResponseWriter, realm string) {
	w.Header().Set("WWW-Authenticate", fmt.Sprintf("Basic realm=%q, charset=\"UTF-8\"", realm))
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusUnauthorized)
	_, _ = w.Write([]byte("401 Unauthorized: valid HTTP Basic credentials are required\n"))
}
