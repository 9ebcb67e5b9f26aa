# stepfort: the first two targets are the README's two commands.
#   make run    start a working CA (quickstart on loopback, embedded bbolt, ./.stepfort)
#   make test   install what the tests need, then run every test
#   make build-fips  bin/stepfort-fips, built with Go's FIPS 140-3 module (docs/fips.md)
#   make build-hsm   bin/stepfort-hsm, the cgo build with PKCS#11 HSM support (docs/hsm.md)

GO       ?= go
export CGO_ENABLED := 0
export PATH := $(CURDIR)/.tools/bin:/usr/local/go/bin:$(PATH)
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.Version=$(VERSION) -X main.BuildTime=$(shell date -u +%Y-%m-%dT%H:%M:%SZ)
BIN      := bin/stepfort
# The FIPS variant links the frozen Go Cryptographic Module v1.0.0 (CMVP
# certificate #5247, shipped in GOROOT/lib/fips140: no download) and runs in
# FIPS 140-3 mode by default. See docs/fips.md.
FIPS_MODULE ?= v1.0.0
BIN_FIPS    := bin/stepfort-fips
# The HSM variant is built with cgo (needs gcc): it links glibc only and
# dlopens the PKCS#11 module named in ca.json. See docs/hsm.md.
BIN_HSM     := bin/stepfort-hsm
# Go's test timeout; the whole suite normally takes a few minutes on 2 cores.
TEST_TIMEOUT ?= 30m

.PHONY: run test vet unit e2e build build-fips build-hsm bench lint fuzz tools clean

run: build
	$(BIN) quickstart --dir $(CURDIR)/.stepfort

# Unit tests run with the race detector, which needs cgo: cgo is on for
# that run only; release builds and the end-to-end tests' binary stay static.
UNIT_PKGS = $(shell $(GO) list ./... | grep -v '/test/e2e$$')

# Prerequisites run left to right: tools, vet, then each tier.
test: tools vet unit e2e

vet:
	$(GO) vet ./...

unit: tools
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) $(UNIT_PKGS)

e2e: tools
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./test/e2e/

build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/stepfort

build-fips:
	GOFIPS140=$(FIPS_MODULE) $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN_FIPS) ./cmd/stepfort

build-hsm:
	CGO_ENABLED=1 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN_HSM) ./cmd/stepfort

tools:
	bash scripts/install-tools.sh

bench: tools build
	bash bench/run.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# Each parser of attacker-controlled input has a fuzz target; run each briefly.
FUZZTIME ?= 20s
fuzz:
	@for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
			echo "fuzz $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
		done; \
	done

clean:
	rm -rf bin
