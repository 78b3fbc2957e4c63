# tollgate — the one entry point. `make run` starts the demo; `make test` sets up and passes.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV     := .venv
PY       := $(VENV)/bin/python
WASM     := target/wasm32-wasip1/release/tollgate.wasm
MOCK     := target/mock/tollgate-mock
APT_PKGS := redis-server wrk nghttp2-client chromium prometheus binaryen
# envoyproxy/ratelimit, the reference global rate-limit service (pinned; v1.4.0 is too old).
RATELIMIT_VERSION := v1.4.1-0.20260122083618-3fb702589d36
GOBIN    := $(shell go env GOPATH 2>/dev/null | cut -d: -f1)/bin
# func-e runs the demo as `ENVOY_PATH=.venv/bin/envoy func-e run -c envoy/envoy.yaml` (pinned).
FUNCE_VERSION := v1.6.0
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: help setup build build-filter unit e2e test run lint fmt clean bench bench-ab bench-knockout floor soak fuzz

help:
	@echo "make run    build, start the mock LLM upstream and Envoy+tollgate on 127.0.0.1:10000"
	@echo "make test   setup, native unit tests, then the e2e suite against real Envoy"
	@echo "make bench  side-by-side benchmark (tests/bench/RESULTS.md)"
	@echo "make bench-ab OLD=<commit>  the same with row (c-old): the filter built from OLD, paired A/B"
	@echo "make bench-knockout  what each large piece of tollgate's work costs in Envoy (docs/performance.md)"
	@echo "make floor  the floor filter of the bench (tests/bench/floor)"
	@echo "make soak   steady mixed SDK traffic through real Envoy (SOAK_SECONDS=180, SOAK_RPS=20)"
	@echo "make fuzz   every cargo-fuzz target for FUZZ_SECONDS (default 60) each"
	@echo "make setup | build | unit | e2e | lint | clean"

# Idempotent: installs only what is missing.
setup: $(VENV)/.done
	@rustup target list --installed | grep -q wasm32-wasip1 || rustup target add wasm32-wasip1
	@# clippy and rustfmt serve `make lint` only: their absence must not stop the tests.
	@rustup component list --installed | grep -q clippy || rustup component add clippy || true
	@rustup component list --installed | grep -q rustfmt || rustup component add rustfmt || true
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "apt-get install$$missing"; \
	  (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi
	@go version -m $(GOBIN)/service_cmd 2>/dev/null | grep -Eq 'mod[[:space:]]+github.com/envoyproxy/ratelimit[[:space:]]+$(RATELIMIT_VERSION)([[:space:]]|$$)' || \
	  { echo "go install envoyproxy/ratelimit service_cmd@$(RATELIMIT_VERSION)"; \
	    go install github.com/envoyproxy/ratelimit/src/service_cmd@$(RATELIMIT_VERSION); }
	@go version -m $(GOBIN)/func-e 2>/dev/null | grep -Eq 'mod[[:space:]]+github.com/tetratelabs/func-e[[:space:]]+$(FUNCE_VERSION)([[:space:]]|$$)' || \
	  { echo "go install tetratelabs/func-e@$(FUNCE_VERSION)"; \
	    go install github.com/tetratelabs/func-e/cmd/func-e@$(FUNCE_VERSION); }

$(VENV)/.done: tests/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r tests/requirements.txt
	touch $@

# binaryen's wasm-opt after rustc: about 75 KB smaller. `-ocimfs 0` keeps it from inlining
# functions with one caller, which would undo the `#[inline(never)]` that keeps every function
# under ~17 KB (V8 keeps TurboFan's compile memory of the largest ones; see filter/core/src/lib.rs).
WASM_OPT := wasm-opt -O3 -ocimfs 0 --enable-simd --enable-bulk-memory --enable-sign-ext \
  --enable-nontrapping-float-to-int --enable-mutable-globals --enable-multivalue --enable-reference-types
# $(call optimise,crate): rustc's module in release/deps, optimised into release/.
optimise = $(WASM_OPT) target/wasm32-wasip1/release/deps/$(1).wasm -o target/wasm32-wasip1/release/$(1).wasm.tmp \
  && mv target/wasm32-wasip1/release/$(1).wasm.tmp target/wasm32-wasip1/release/$(1).wasm

build: build-filter
	cargo build --release -p tollgate-cli

# What `make run` needs: the filter and the mock upstream (not the CLI).
build-filter:
	cargo build --release --target wasm32-wasip1 -p tollgate
	$(call optimise,tollgate)
	cargo build --profile mock -p tollgate-mock
	@ls -l $(WASM) | awk '{print "tollgate.wasm: " $$5 " bytes"}'

unit:
	cargo test -p tollgate-core -p tollgate-cli

e2e: build
	$(PY) -m pytest -q tests/e2e

test: setup
	$(MAKE) unit
	$(MAKE) e2e

run: setup build-filter
	$(PY) tests/run.py

lint:
	cargo fmt --all -- --check
	cargo clippy -p tollgate-core --all-targets -- -D warnings
	cargo clippy -p tollgate-core --target wasm32-wasip1 -- -D warnings
	cargo clippy -p tollgate --target wasm32-wasip1 -- -D warnings
	cargo clippy -p tollgate-cli --all-targets -- -D warnings
	cargo clippy -p tollgate-floor --target wasm32-wasip1 -- -D warnings

fmt:
	cargo fmt --all

clean:
	cargo clean

# --- benchmark: `make bench`, or `make bench BENCH_ARGS=--quick`; results in tests/bench/RESULTS.md ---
BENCH_VENV      := .bench-venv
LITELLM_VERSION := 1.106.2

# The floor (tests/bench/floor): a wasm filter of tollgate's shape doing none of its work.
floor:
	cargo build --release --target wasm32-wasip1 -p tollgate-floor
	$(call optimise,tollgate_floor)

bench: setup build floor $(BENCH_VENV)/.done
	$(PY) tests/bench/bench.py $(BENCH_ARGS)

# `make bench-knockout`: what each large piece of tollgate's own work costs in Envoy, by
# builds with it switched off (tests/bench/knockout.py says which variables choose what;
# docs/performance.md has the figures). `build` brings the mock upstream.
bench-knockout: setup build floor
	$(PY) tests/bench/knockout.py

# `make bench-ab OLD=<commit>`: `make bench` plus row (c-old), the filter built from OLD (its
# sources from `git archive`, its own target dir, optimised with this Makefile's wasm-opt), and
# a paired new/old section in RESULTS.md.
AB_OLD := target/ab-old
bench-ab:
	@test -n "$(OLD)" || { echo "usage: make bench-ab OLD=<commit>"; exit 2; }
	rm -rf $(AB_OLD)/src && mkdir -p $(AB_OLD)/src
	git archive $(OLD) | tar -x -C $(AB_OLD)/src
	cd $(AB_OLD)/src && cargo build --release --target wasm32-wasip1 -p tollgate --target-dir ../target
	$(WASM_OPT) $(AB_OLD)/target/wasm32-wasip1/release/deps/tollgate.wasm -o $(AB_OLD)/tollgate-old.wasm
	$(MAKE) bench BENCH_ARGS="$(BENCH_ARGS) --ab $(AB_OLD)/tollgate-old.wasm"

# LiteLLM's proxy (the peer row) in a venv of its own: its dependency tree must not mix with
# the test venv's pins.
$(BENCH_VENV)/.done:
	python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q --upgrade pip
	$(BENCH_VENV)/bin/pip install -q 'litellm[proxy]==$(LITELLM_VERSION)'
	touch $@

soak: setup build
	$(PY) tests/soak.py

fuzz:
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	FUZZ_SECONDS=$(or $(FUZZ_SECONDS),60) fuzz/run.sh
