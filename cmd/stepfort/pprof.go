package main

import (
	"log/slog"
	"net/http"
	"net/http/pprof"
	"os"
)

// startPprof serves Go's profiler on STEPFORT_PPROF_ADDR (for example
// 127.0.0.1:6060) when it is set: how the benchmarks find where a
// request's CPU goes. It is off by default and must stay on loopback.
func startPprof() {
	addr := os.Getenv("STEPFORT_PPROF_ADDR")
	if addr == "" {
		return
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	go func() {
		slog.Warn("profiler listening", "address", addr)
		if err := http.ListenAndServe(addr, mux); err != nil {
			slog.Error("profiler", "error", err)
		}
	}()
}
