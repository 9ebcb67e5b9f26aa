package main

import (
	"fmt"
	"sort"
)

// targetRatio is the goal for stepfort/upstream throughput with
// every plugin idle.
const targetRatio = 0.95

// printTable prints, per server, the median over rounds of each measure, and
// the throughput ratios against upstream.
func printTable(dbType string, o *options, results []*runResult) {
	fmt.Printf("\n== %s: median of %d rounds (N=%d, warm-up %d, %d workers) ==\n", dbType, o.rounds, o.n, o.warmup, o.workers)
	fmt.Printf("%-16s %9s %17s %8s %8s %13s %13s %14s %14s\n",
		"server", "certs/s", "(min-max)", "p50 ms", "p99 ms", "CPU ms/cert", "idle RSS MiB", "start RSS MiB", "peak RSS MiB")
	medians, cpus := map[string]float64{}, map[string]float64{}
	for _, name := range o.servers {
		var tput, p50, p99, cpu, idle, start, peak []float64
		for _, r := range results {
			if r.server != name {
				continue
			}
			tput = append(tput, r.certsPerSec)
			p50 = append(p50, ms(r.p50))
			p99 = append(p99, ms(r.p99))
			cpu = append(cpu, ms(r.cpuPerCert))
			idle = append(idle, r.idleRSS)
			start = append(start, r.startRSS)
			peak = append(peak, r.peakRSS)
		}
		medians[name], cpus[name] = median(tput), median(cpu)
		lo, hi := minMax(tput)
		fmt.Printf("%-16s %9.1f %17s %8.1f %8.1f %13.2f %13.1f %14.1f %14.1f\n",
			name, medians[name], fmt.Sprintf("(%.1f-%.1f)", lo, hi), median(p50), median(p99), cpus[name], median(idle), median(start), median(peak))
	}
	up, ok := medians["upstream"]
	if !ok || up == 0 {
		return
	}
	if v, ok := medians["stepfort"]; ok {
		note := "plugins idle"
		if o.plugins != "idle" {
			note = "plugins as configured by stepfort init; the target applies to idle plugins"
		}
		fmt.Printf("stepfort/upstream throughput ratio: %.2f (target >= %.2f; %s)\n", v/up, targetRatio, note)
		if cpus["upstream"] > 0 {
			fmt.Printf("stepfort/upstream server CPU per certificate: %.2f (lower is better; less sensitive to machine noise)\n", cpus["stepfort"]/cpus["upstream"])
		}
	}
	if v, ok := medians["stepfort-plugins"]; ok {
		fmt.Printf("stepfort-plugins/upstream throughput ratio: %.2f (informative: plugins as configured by stepfort init)\n", v/up)
	}
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func minMax(xs []float64) (lo, hi float64) {
	for i, x := range xs {
		if i == 0 || x < lo {
			lo = x
		}
		if i == 0 || x > hi {
			hi = x
		}
	}
	return lo, hi
}
