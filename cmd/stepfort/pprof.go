package main

import (
	"log/slog"
	"net/http"
	"net/http/pprof"
	"os"
	"time"
)

// startPprof serves Go's profiler on STEP_PROF_ADDR (for example
// 127.0.0.1:6060) when it is set, as upstream's step-ca does, so both can
// be profiled the same way. It is off by default and belongs on loopback.
func startPprof() {
	addr := os.Getenv("STEP_PROF_ADDR")
	if addr == "" {
		return
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	go func() {
		srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 15 * time.Second}
		slog.Warn("profiler listening (STEP_PROF_ADDR)", "address", addr)
		if err := srv.ListenAndServe(); err != nil {
			slog.Error("profiler", "error", err)
		}
	}()
}
