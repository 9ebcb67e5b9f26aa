#!/usr/bin/env bash
# run.sh runs the benchmarks under bench/ (sign, billing, attestation, ha,
# deviceattest, scep, adcsimport, audit, hsm, certindex, ui). The sign
# benchmark runs upstream step-ca v0.30.2 and stepfort, alternately, on the
# same ca.json with bbolt and then PostgreSQL, under the same /1.0/sign load. `make bench` calls it.
#
# Arguments are passed to the benchmark (see `bench/run.sh -h`); so are the
# BENCH_* environment variables (BENCH_N, BENCH_ROUNDS, BENCH_DB, ...).
# It installs missing tools with scripts/install-tools.sh and builds
# everything with CGO_ENABLED=0. The exit status is non-zero on any error or
# failed request, not when stepfort misses its throughput target.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CGO_ENABLED=0

# need_tools: true if step-ca v0.30.2 or (when benchmarking PostgreSQL) the
# PostgreSQL server is missing.
need_tools() {
	if ! .tools/bin/step-ca version 2>/dev/null | grep -q '/0.30.2 '; then
		return 0
	fi
	case "${BENCH_DB:-bbolt,postgresql} $*" in
	*postgresql*)
		compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || return 0
		;;
	esac
	return 1
}

if need_tools "$@"; then
	if [[ -x scripts/install-tools.sh ]]; then
		scripts/install-tools.sh
	else
		echo "scripts/install-tools.sh not found; building step-ca v0.30.2 into .tools/bin" >&2
		GOBIN="$ROOT/.tools/bin" go install -trimpath -ldflags "-s -w -X main.Version=0.30.2" \
			github.com/smallstep/certificates/cmd/step-ca@v0.30.2
	fi
fi

mkdir -p .cache/bench
# Each benchmark is a program under bench/; they run one after the other so
# every comparison is made within one run. BENCH_ONLY=sign,ha limits the set;
# BENCH_HA=0 skips the HA benchmark. Arguments go to the sign benchmark.
only="${BENCH_ONLY:-sign,billing,attestation,ha,deviceattest,scep,adcsimport,audit,hsm,certindex,ui}"
[[ "${BENCH_HA:-1}" == 0 ]] && only="${only//ha/}"
status=0
for b in sign billing attestation ha deviceattest scep adcsimport audit hsm certindex ui; do
	[[ ",$only," == *",$b,"* ]] || continue
	echo "=== bench/$b ==="
	cgo=0
	[[ $b == hsm ]] && cgo=1 # PKCS#11 (SoftHSM2) needs cgo
	CGO_ENABLED=$cgo go build -o ".cache/bench/$b" "./bench/$b" || { status=1; continue; }
	if [[ $b == sign ]]; then
		# The sign benchmark builds ./cmd/stepfort itself (same flags as step-ca).
		".cache/bench/$b" "$@" || status=1
	else
		".cache/bench/$b" || status=1
	fi
done
exit $status
