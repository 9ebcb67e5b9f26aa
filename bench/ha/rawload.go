package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/stepfort/stepfort/internal/testenv"
)

// The timed OCSP loads use this small HTTP/1.1 client instead of net/http's:
// on two shared cores the load generator competes with the server for CPU,
// and net/http's client costs about as much per request as the server's
// answer, so it would cap what any responder can be measured at. Requests
// are pre-serialised; a response is read up to Content-Length. Every
// response is still checked: status 200 and a signed body (errors are 5
// bytes). The answers themselves were verified beforehand with checkOCSP.
// Both stepfort and openssl are measured with it in the same run.

// rawRequests serialises reqs for base ("http://host:port/path").
func rawRequests(base string, reqs []ocspReq, keepAlive bool) ([][]byte, string, error) {
	u, err := url.Parse(base)
	if err != nil {
		return nil, "", err
	}
	conn := "keep-alive"
	if !keepAlive {
		conn = "close"
	}
	path := u.EscapedPath()
	if path == "" {
		path = "/"
	}
	out := make([][]byte, len(reqs))
	for i, r := range reqs {
		var b bytes.Buffer
		if r.get {
			p := path
			if p[len(p)-1] != '/' {
				p += "/"
			}
			fmt.Fprintf(&b, "GET %s%s HTTP/1.1\r\nHost: %s\r\nConnection: %s\r\n\r\n", p, r.path, u.Host, conn)
		} else {
			fmt.Fprintf(&b, "POST %s HTTP/1.1\r\nHost: %s\r\nConnection: %s\r\nContent-Type: application/ocsp-request\r\nContent-Length: %d\r\n\r\n", path, u.Host, conn, len(r.der))
			b.Write(r.der)
		}
		out[i] = b.Bytes()
	}
	return out, u.Host, nil
}

// rawConn is one client connection with its read buffer.
type rawConn struct {
	c  net.Conn
	br *bufio.Reader
}

func dialRaw(addr string) (*rawConn, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	return &rawConn{c: c, br: bufio.NewReaderSize(c, 16<<10)}, nil
}

var errStatus = errors.New("not 200")

// roundTrip writes req and reads one response; closed reports that the
// server will not take another request on this connection.
func (rc *rawConn) roundTrip(req []byte, body []byte) (n int, closed bool, err error) {
	_ = rc.c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := rc.c.Write(req); err != nil {
		return 0, true, err
	}
	line, err := rc.br.ReadSlice('\n')
	if err != nil {
		return 0, true, err
	}
	// "HTTP/1.x 200 ..."
	if len(line) < 12 || !bytes.Equal(line[9:12], []byte("200")) {
		return 0, true, fmt.Errorf("%w: %q", errStatus, bytes.TrimSpace(line))
	}
	http10 := bytes.HasPrefix(line, []byte("HTTP/1.0"))
	length := -1
	for {
		h, err := rc.br.ReadSlice('\n')
		if err != nil {
			return 0, true, err
		}
		if len(h) <= 2 {
			break
		}
		k, v, ok := bytes.Cut(h, []byte(":"))
		if !ok {
			continue
		}
		v = bytes.TrimSpace(v)
		switch {
		case asciiEqualFold(k, "content-length"):
			if length, err = strconv.Atoi(string(v)); err != nil {
				return 0, true, fmt.Errorf("bad Content-Length %q", v)
			}
		case asciiEqualFold(k, "connection"):
			closed = asciiEqualFold(v, "close")
		}
	}
	if length < 0 {
		return 0, true, errors.New("response without Content-Length")
	}
	if length > len(body) {
		return 0, true, fmt.Errorf("response of %d bytes", length)
	}
	if _, err := readFull(rc.br, body[:length]); err != nil {
		return 0, true, err
	}
	if length <= 5 {
		return 0, closed, fmt.Errorf("OCSP error response %x", body[:length])
	}
	return length, closed || http10, nil
}

func readFull(br *bufio.Reader, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := br.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range b {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// rawLoad sends reqs round-robin from workers connections for d. With
// keepAlive false every request gets a new connection.
func rawLoad(ctx context.Context, base string, reqs []ocspReq, workers int, d time.Duration, keepAlive bool) (*loadResult, error) {
	wire, addr, err := rawRequests(base, reqs, keepAlive)
	if err != nil {
		return nil, err
	}
	return timedLoad(ctx, workers, d, func() (func(i int64) error, func()) {
		body := make([]byte, 64<<10)
		var rc *rawConn
		step := func(i int64) error {
			if rc == nil {
				var err error
				if rc, err = dialRaw(addr); err != nil {
					time.Sleep(time.Millisecond)
					return err
				}
			}
			_, closed, err := rc.roundTrip(wire[int(i)%len(wire)], body)
			if closed || err != nil || !keepAlive {
				rc.c.Close()
				rc = nil
			}
			return err
		}
		return step, func() {
			if rc != nil {
				rc.c.Close()
			}
		}
	}), nil
}

// ceilingLoad measures what this machine's loopback HTTP allows at all: a
// net/http server in a child process (this binary with -fixed-server) whose
// handler reads the request and writes a fixed body of bodySize bytes with
// OCSP-like headers, under the same load as the responders. A responder
// built on net/http cannot be faster; stepfort's rate is printed against it.
func ceilingLoad(ctx context.Context, dir string, reqs []ocspReq, workers int, d time.Duration, bodySize int) (*loadResult, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	port, err := testenv.FreePort()
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	p, err := testenv.NewProcess(filepath.Join(dir, "fixed-server.log"), self, []string{"-fixed-server", addr, "-fixed-size", strconv.Itoa(bodySize)}, nil)
	if err != nil {
		return nil, err
	}
	defer func() { _ = p.Kill9() }()
	if err := testenv.WaitTCP(addr, 10*time.Second); err != nil {
		return nil, fmt.Errorf("fixed server: %w\n%s", err, p.Log())
	}
	return rawLoad(ctx, "http://"+addr+"/ocsp", reqs, workers, d, true)
}

// serveFixed is the ceiling server: net/http, a handler that reads the
// request body and writes size fixed bytes.
func serveFixed(addr string, size int) error {
	body := bytes.Repeat([]byte{0x30}, size)
	srv := &http.Server{Addr: addr, ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		h := w.Header()
		h["Content-Type"] = []string{"application/ocsp-response"}
		h["Cache-Control"] = []string{"max-age=86400, public, no-transform, must-revalidate"}
		_, _ = w.Write(body)
	})}
	return srv.ListenAndServe()
}
