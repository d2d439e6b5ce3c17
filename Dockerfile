# syntax=docker/dockerfile:1
# The operator image: a static release binary on distroless/static, run as a
# non-root user.
#
#   docker build -t registry.example/mtls-migrator:0.1.0 .
#   docker push registry.example/mtls-migrator:0.1.0
#   (cd config/default && kustomize edit set image mtls-migrator=registry.example/mtls-migrator:0.1.0)
#   kubectl apply -k config/default

# Build stage: the very command developers and tests use (`make image-binary`:
# release profile, glibc linked statically), so what the image ships is what
# tests/deploy_image.rs checks.
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/cargo-target \
    make image-binary CARGO_TARGET_DIR=/cargo-target

# Runtime stage: no shell, no package manager, no libc needed.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/target/image/mtls-migrator /mtls-migrator
# distroless "nonroot"; the Deployment also sets runAsUser 65532.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/mtls-migrator"]
CMD ["run"]
