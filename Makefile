# `make test` is the one test command (CI runs it through .ci/run): installs
# what is missing, checks formatting and lints, starts the local control
# plane (e2e/sandbox), runs every test, and stops the sandbox even on failure.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c

# Shared across runs (and helpers) so CI reuses the build.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/mtls-migrator/cargo-target
CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# command:debian-package pairs the sandbox needs.
TOOLS := prometheus:prometheus openssl:openssl curl:curl flock:util-linux setsid:util-linux

.PHONY: test deps controlplane lint sandbox-up sandbox-down sandbox-status crds

test: deps lint
	@# KEEP_SANDBOX=1 leaves the sandbox running afterwards for debugging.
	@if [ "$${KEEP_SANDBOX:-0}" != 1 ]; then trap 'e2e/sandbox down' EXIT; trap 'exit 130' INT TERM; fi; \
	e2e/sandbox up; \
	source target/sandbox/env; \
	$(CARGO) test --workspace

# `make demo` shows the operator's main job on the local sandbox in a few
# minutes: builds, starts the sandbox if none runs (and stops it afterwards),
# migrates a simulated namespace to STRICT on evidence, rolls back, cleans up.
# DEMO_FAST=1 makes the simulated clients enroll 5x sooner.
.PHONY: demo
demo: deps
	e2e/demo

deps:
	@missing=""; \
	for t in $(TOOLS); do command -v "$${t%%:*}" >/dev/null || missing="$$missing $${t#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@command -v go >/dev/null || { echo "Go is required to build the control plane (e2e/controlplane)"; exit 1; }
	@$(CARGO) fmt --version >/dev/null 2>&1 || rustup component add rustfmt
	@$(CARGO) clippy --version >/dev/null 2>&1 || rustup component add clippy
	@$(MAKE) --no-print-directory controlplane

# Cached on go.sum: minutes cold, instant afterwards.
controlplane:
	@e2e/controlplane/build.sh >/dev/null

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

sandbox-up: deps
	e2e/sandbox up

sandbox-down:
	e2e/sandbox down

sandbox-status:
	e2e/sandbox status

# Regenerates the CRD YAML from the Rust types (never edit crds/ by hand).
crds:
	$(CARGO) run --quiet --bin mtls-migrator -- crd > crds/.mtlsmigration.yaml.tmp
	mv crds/.mtlsmigration.yaml.tmp crds/mtlsmigration.yaml
	@# kustomize refuses files outside config/crd, so it holds a copy (a test checks they match).
	cp crds/mtlsmigration.yaml config/crd/bases/mtls.migrator.dev_mtlsmigrations.yaml

# The binary the container image ships (the Dockerfile's build stage runs
# this same target): release profile, glibc linked statically so it runs on
# distroless/static, copied to target/image/mtls-migrator.
# tests/deploy_image.rs checks that the Dockerfile goes through here.
IMAGE_TARGET ?= x86_64-unknown-linux-gnu
IMAGE_RUSTFLAGS := -C target-feature=+crt-static
.PHONY: image-binary
image-binary:
	RUSTFLAGS="$(IMAGE_RUSTFLAGS)" $(CARGO) build --release --locked --target $(IMAGE_TARGET) --bin mtls-migrator
	mkdir -p target/image
	cp $(CARGO_TARGET_DIR)/$(IMAGE_TARGET)/release/mtls-migrator target/image/mtls-migrator
