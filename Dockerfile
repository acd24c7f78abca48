# syntax=docker/dockerfile:1
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /flashsync ./cmd/flashsync \
 && mkdir -p /out/var/lib/flashsync

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /flashsync /flashsync
# Writable state dir (binlog position file) for the nonroot user; a named volume
# mounted here inherits this ownership.
COPY --from=build --chown=65532:65532 /out/var/lib/flashsync /var/lib/flashsync
EXPOSE 18080
ENTRYPOINT ["/flashsync"]
CMD ["all", "-config", "/etc/flashsync/flashsync.toml"]
