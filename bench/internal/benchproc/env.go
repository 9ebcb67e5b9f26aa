package benchproc

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// EnvInt is the integer in environment variable name, or def.
func EnvInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return v
	}
	return def
}

// EnvStr is environment variable name, or def when it is empty.
func EnvStr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// EnvDur is the duration in environment variable name, or def.
func EnvDur(name string, def time.Duration) time.Duration {
	if v, err := time.ParseDuration(os.Getenv(name)); err == nil {
		return v
	}
	return def
}

// SplitList splits a comma-separated list, dropping empty items.
func SplitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// Workdir returns the scratch directory dir (created if needed), or a new
// temporary one named after prefix when dir is empty. Call the returned
// done with the run's error when the benchmark ends: it removes the
// directory unless keep is set or the run failed, in which case it says
// where the logs are.
func Workdir(dir, prefix string, keep bool) (string, func(err error), error) {
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", prefix); err != nil {
			return "", nil, err
		}
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", nil, err
	}
	return dir, func(err error) {
		if keep || err != nil {
			fmt.Printf("\nlogs and configurations kept in %s\n", dir)
		} else {
			_ = os.RemoveAll(dir)
		}
	}, nil
}
