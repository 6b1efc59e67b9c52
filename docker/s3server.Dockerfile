# A local S3 for kind (examples/kind/s3.yaml, CI's end-to-end job): the SeaweedFS `weed` binary that
# scripts/s3server.sh builds from the Go module pinned in tests/s3server (static, CGO off) — the very server the
# test suite proves honours conditional writes — on distroless/static, non-root. Build context: weed's folder.
#   weed="$(scripts/s3server.sh build)"
#   docker build -f docker/s3server.Dockerfile -t silverline-e2e-s3:local "$(dirname "$weed")"
FROM gcr.io/distroless/static-debian12:nonroot
COPY --chown=0:0 --chmod=0555 weed /usr/local/bin/weed
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/weed"]
