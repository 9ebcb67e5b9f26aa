# syntax=docker/dockerfile:1
#
# stepfort: a static binary in a small non-root image.
#
#   docker build -t stepfort --build-arg VERSION=$(git describe --always --dirty) .
#   docker build -t stepfort:fips --build-arg GOFIPS140=v1.0.0 .   (FIPS 140-3 variant)
#   docker build -t stepfort:hsm --target hsm .                    (PKCS#11 HSM variant, Debian)
#   docker run -d -p 9000:9000 -p 9080:9080 -v stepfort-data:/data stepfort
#
# See docs/install.md for init/serve and the notes on volumes.

# --- build -------------------------------------------------------------------
FROM golang:1.26 AS build
WORKDIR /src

# Dependencies first, so source edits do not invalidate this layer.
COPY go.mod go.sum ./
RUN go mod download

COPY . .
ARG VERSION=dev
ARG BUILD_TIME=unknown
# GOFIPS140=v1.0.0 links the frozen Go Cryptographic Module v1.0.0 (in the Go
# toolchain: no download) and makes FIPS 140-3 mode the binary's default;
# "off" is the standard build. See docs/fips.md.
ARG GOFIPS140=off
# CGO_ENABLED=0: a static binary that runs on any base image. The pkcs11 and
# yubikey KMS drivers need cgo and are stubs here; the "hsm" target below
# builds the PKCS#11 variant (docs/hsm.md).
RUN CGO_ENABLED=0 GOFIPS140=${GOFIPS140} go build -trimpath \
      -ldflags "-s -w -X main.Version=${VERSION} -X main.BuildTime=${BUILD_TIME}" \
      -o /out/stepfort ./cmd/stepfort

# --- HSM variant (docker build --target hsm -t stepfort:hsm .) ---------------
# The cgo build with PKCS#11 support (docs/hsm.md): it links glibc only and
# dlopens the module named in ca.json, so it runs on Debian, not Alpine. Mount
# or install the vendor's PKCS#11 module into the image; softhsm2 is here for
# trying it out. Not built by default: the final stage below is the default.
FROM build AS build-hsm
ARG VERSION=dev
ARG BUILD_TIME=unknown
RUN CGO_ENABLED=1 go build -trimpath \
      -ldflags "-s -w -X main.Version=${VERSION} -X main.BuildTime=${BUILD_TIME}" \
      -o /out/stepfort-hsm ./cmd/stepfort

FROM debian:trixie-slim AS hsm
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates wget softhsm2 opensc \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd -g 10001 stepfort \
 && useradd -r -u 10001 -g stepfort -d /data -s /usr/sbin/nologin stepfort \
 && mkdir -p /data && chown 10001:10001 /data && chmod 0700 /data
COPY --from=build-hsm /out/stepfort-hsm /usr/local/bin/stepfort
USER 10001:10001
WORKDIR /data
ENV STEPFORT_DIR=/data
VOLUME ["/data"]
EXPOSE 9000 9080
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["wget", "--no-check-certificate", "-q", "-O", "/dev/null", "https://127.0.0.1:9000/health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/stepfort"]
CMD ["serve", "/data/config/ca.json", "--password-file", "/data/secrets/password"]

# --- runtime -----------------------------------------------------------------
# Alpine rather than distroless: the HEALTHCHECK needs an HTTPS client, and
# distroless has neither a shell nor a client, while stepfort has no "health"
# command. Alpine's busybox wget (with ssl_client) is enough, and the base
# image already carries the CA bundle used for outgoing webhook calls.
FROM alpine:3.22

# A fixed uid/gid so bind mounts can be prepared on the host
# (chown 10001:10001 <dir>). /data is created here with that owner so a named
# volume mounted on it inherits the ownership and mode.
RUN addgroup -S -g 10001 stepfort \
 && adduser -S -D -H -u 10001 -G stepfort -h /data -s /sbin/nologin stepfort \
 && mkdir -p /data \
 && chown 10001:10001 /data \
 && chmod 0700 /data

COPY --from=build /out/stepfort /usr/local/bin/stepfort

USER 10001:10001
WORKDIR /data
ENV STEPFORT_DIR=/data
VOLUME ["/data"]

# 9000: HTTPS (step-ca API, ACME, SCEP, /api/v1); 9080: HTTP (CRL, SCEP).
EXPOSE 9000 9080

# /health is upstream's health endpoint on the HTTPS listener. The CA's TLS
# certificate may not name 127.0.0.1 (it carries the --dns names), so the
# check does not verify it: it tests liveness, not trust.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["wget", "--no-check-certificate", "-q", "-O", "/dev/null", "https://127.0.0.1:9000/health"]

# SIGTERM drains in-flight requests for up to 60 seconds: stop with
# "docker stop -t 75". SIGHUP reloads ca.json.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/stepfort"]
# First start writes a CA into /data (init), later starts reuse it. Replace
# with e.g. ["serve", "/data/config/ca.json", "--password-file", "/data/secrets/password"].
CMD ["quickstart", "--dir", "/data", "--address", "0.0.0.0:9000", "--insecure-address", "0.0.0.0:9080"]
