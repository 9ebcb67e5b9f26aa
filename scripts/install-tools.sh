#!/usr/bin/env bash
# install-tools.sh installs the external tools that the end-to-end tests and
# benchmarks need. Go binaries go to .tools/bin at the repository root
# (git-ignored); system tools come from Debian packages.
#
# It is idempotent and fast when everything is present. It needs no input;
# installing Debian packages requires root (or passwordless sudo).
set -euo pipefail

STEP_VERSION=0.30.2     # smallstep/cli
STEP_CA_VERSION=0.30.2  # smallstep/certificates
SCEPCLIENT_VERSION=2.3.0 # micromdm/scep scepclient

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/.tools/bin"
mkdir -p "$BIN"

export CGO_ENABLED=0
# CI images often have Go installed but not in PATH.
if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then
	PATH="$PATH:/usr/local/go/bin"
fi

say() { printf '%-14s %s\n' "$1" "$2"; }

# reports_version BINARY VERSION: true if "BINARY version" mentions VERSION.
reports_version() {
	[[ -x "$1" ]] && [[ "$("$1" version 2>/dev/null)" == *"/$2 "* ]]
}

# prints_version BINARY VERSION: true if "BINARY -version" prints exactly
# VERSION (micromdm's scepclient has no "version" subcommand).
prints_version() {
	[[ -x "$1" ]] && [[ "$("$1" -version 2>/dev/null)" == "$2" ]]
}

# go_install NAME PKG VERSION [VAR]: installs PKG@vVERSION as $BIN/NAME,
# stamping the version into VAR (default main.Version; go install leaves it
# as "N/A"). If installing directly fails (e.g. because of replace
# directives), builds it from a temporary module.
go_install() {
	local name=$1 pkg=$2 ver=$3 var=${4:-main.Version}
	local ldflags="-s -w -X $var=$ver"
	if GOBIN="$BIN" go install -trimpath -ldflags "$ldflags" "$pkg@v$ver"; then
		return 0
	fi
	echo "go install $pkg@v$ver failed; building from a temporary module" >&2
	local tmp rc=0
	tmp="$(mktemp -d)"
	# errexit does not apply in a || list, hence the && chain.
	(
		cd "$tmp" &&
			go mod init tools.local/build >/dev/null 2>&1 &&
			go get "$pkg@v$ver" &&
			go build -trimpath -ldflags "$ldflags" -o "$BIN/$name" "$pkg"
	) || rc=$?
	rm -rf "$tmp"
	return $rc
}

install_go_tool() {
	local name=$1 pkg=$2 ver=$3
	if reports_version "$BIN/$name" "$ver"; then
		say "$name" "already present ($ver)"
		return
	fi
	go_install "$name" "$pkg" "$ver"
	reports_version "$BIN/$name" "$ver" || {
		echo "$name: installed binary does not report version $ver" >&2
		exit 1
	}
	say "$name" "installed ($ver)"
}

# --- Debian packages -------------------------------------------------------

# Each entry: "package:check", where check is a command name or an absolute
# path whose presence means the package is installed.
DEB_TOOLS=(
	"postgresql-15:/usr/lib/postgresql/15/bin/postgres"
	"openssl:openssl"
	"curl:curl"
	"swtpm:swtpm"
	"swtpm-tools:swtpm_setup"
	"lego:lego"
	"gcc:gcc" # the race detector in make unit needs cgo
	"certmonger:getcert" # SCEP client (GET PKIOperation) in test/e2e/scep_test.go
	"dbus:dbus-run-session" # certmonger needs a (private session) bus
	"libnss3-tools:vfychain" # NSS crlutil/vfychain/certutil in test/e2e/crl_nss_test.go
	"softhsm2:softhsm2-util" # PKCS#11 token for test/e2e/hsm_test.go, internal/hsm and bench/hsm
	"opensc:pkcs11-tool"     # reads the token's objects in test/e2e/hsm_test.go
	"chromium:chromium"      # headless browser for test/e2e/ui_test.go (chromedp)
	"fonts-liberation:/usr/share/fonts/truetype/liberation" # chromium only recommends it: no fonts, empty boxes in screenshots
)

present() {
	if [[ $1 == /* ]]; then [[ -x $1 ]]; else command -v "$1" >/dev/null 2>&1; fi
}

missing=()
for entry in "${DEB_TOOLS[@]}"; do
	pkg=${entry%%:*} check=${entry#*:}
	if present "$check"; then
		say "$pkg" "already present"
	else
		missing+=("$pkg")
	fi
done

if ((${#missing[@]})); then
	SUDO=()
	if ((EUID != 0)); then
		command -v sudo >/dev/null || {
			echo "need root to install: ${missing[*]}" >&2
			exit 1
		}
		SUDO=(sudo -n)
	fi
	export DEBIAN_FRONTEND=noninteractive
	aptlog="$(mktemp)"
	if ! { "${SUDO[@]}" apt-get update -q &&
		"${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"; } >"$aptlog" 2>&1; then
		cat "$aptlog" >&2
		echo "apt-get install ${missing[*]} failed" >&2
		exit 1
	fi
	rm -f "$aptlog"
	for entry in "${DEB_TOOLS[@]}"; do
		pkg=${entry%%:*} check=${entry#*:}
		for m in "${missing[@]}"; do
			[[ $m == "$pkg" ]] || continue
			present "$check" || {
				echo "$pkg: installed but $check not found" >&2
				exit 1
			}
			say "$pkg" "installed"
		done
	done
fi

# PostgreSQL refuses to run as root; the tests run it as this user.
if ! id -u postgres >/dev/null 2>&1; then
	if ((EUID == 0)); then
		useradd --system --user-group --no-create-home --shell /usr/sbin/nologin postgres
		say "postgres" "system user created"
	fi
fi

# --- Go tools ---------------------------------------------------------------

install_go_tool step github.com/smallstep/cli/cmd/step "$STEP_VERSION"
install_go_tool step-ca github.com/smallstep/certificates/cmd/step-ca "$STEP_CA_VERSION"

# micromdm's SCEP client: no "version" subcommand, and its version variable
# is main.version, so it gets its own check.
if prints_version "$BIN/scepclient" "$SCEPCLIENT_VERSION"; then
	say scepclient "already present ($SCEPCLIENT_VERSION)"
else
	go_install scepclient github.com/micromdm/scep/v2/cmd/scepclient "$SCEPCLIENT_VERSION" main.version
	prints_version "$BIN/scepclient" "$SCEPCLIENT_VERSION" || {
		echo "scepclient: installed binary does not print version $SCEPCLIENT_VERSION" >&2
		exit 1
	}
	say scepclient "installed ($SCEPCLIENT_VERSION)"
fi
