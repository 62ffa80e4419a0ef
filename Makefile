# One set of commands for people and CI. `make help` lists them.
.PHONY: help setup test-tools plugins deploy-local test lint fmt docs bench-plugins bench-db bench-pipeline bench-rollback bench-s3 bench-daemon ci

CARGO ?= cargo

help:
	@echo "make setup          install the wasm32-wasip2 target (rustup does not auto-install it here)"
	@echo "make test-tools     install s3s-fs, boto3 and componentize-py for the tests, once, under target/tools (make test does)"
	@echo "make plugins        build every plugin for wasm32-wasip2 (release, size-optimised)"
	@echo "make deploy-local   the main job: deploy the example app to the local environment (SQLite, local target)"
	@echo "make test           the whole test suite (builds the plugins once, then runs every test)"
	@echo "make docs           regenerate docs/wit-reference.md from the WIT doc comments (a test checks it is current)"
	@echo "make lint           cargo fmt --check and clippy -D warnings over host, tests and plugins"
	@echo "make bench-plugins  plugin runtime benchmark (release build), prints p50/p90"
	@echo "make bench-db       migrations vs sqlx, backup vs pg_dump (throwaway PostgreSQL; several minutes)"
	@echo "make bench-pipeline the full local pipeline, per stage, next to the runbook script it replaces"
	@echo "make bench-rollback emergency rollback: --app-only and --full (100 MB SQLite), next to the runbook script"
	@echo "make bench-s3       a 1 GiB backup to a local S3 server: the S3 plugin next to aws s3 cp"
	@echo "make bench-daemon   the daemon: 500 triggers across 50 environments (throughput, p99) and idle memory with 4 plugins"
	@echo "make ci             what .ci/run runs: lint, then test"

# Test tools, installed once under target/tools: s3s-fs (a local S3 server that verifies
# SigV4; 0.14.1 is the last that builds with rustc 1.95), boto3 (the independent client) and
# awscli (what the S3 benchmark compares with), componentize-py (builds the Python plugins).
TOOLS := target/tools

setup:
	rustup target add wasm32-wasip2

test-tools:
	test -x $(TOOLS)/bin/s3s-fs || $(CARGO) install s3s-fs --version 0.14.1 --features binary --root $(TOOLS)
	test -x $(TOOLS)/venv/bin/python || python3 -m venv $(TOOLS)/venv
	test -x $(TOOLS)/venv/bin/aws || $(TOOLS)/venv/bin/pip install --quiet 'boto3>=1.34,<2' 'awscli>=1.32,<2'
	test -x $(TOOLS)/venv/bin/componentize-py || $(TOOLS)/venv/bin/pip install --quiet 'componentize-py==0.25.1'

plugins: setup
	cd plugins && $(CARGO) build --release --target wasm32-wasip2 --workspace

deploy-local: plugins
	$(CARGO) run -p deploy-agent -- deploy --env local

test: setup test-tools
	$(CARGO) test --workspace

lint: setup
	$(CARGO) fmt --all --check
	cd plugins && $(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	cd plugins && $(CARGO) clippy --workspace --all-targets -- -D warnings
	cd plugins && $(CARGO) clippy --workspace --all-targets --target wasm32-wasip2 -- -D warnings

docs:
	DEPLOY_AGENT_BLESS=1 $(CARGO) test -p deploy-agent-tests --test e2e the_wit_reference_is_generated_from_the_wit

fmt:
	$(CARGO) fmt --all
	cd plugins && $(CARGO) fmt --all

bench-plugins: plugins
	$(CARGO) run --release -p deploy-agent -- bench plugins

bench-db: setup
	$(CARGO) bench -p deploy-agent-tests --bench migrations
	$(CARGO) bench -p deploy-agent-tests --bench backup

bench-pipeline: setup
	$(CARGO) bench -p deploy-agent-tests --bench pipeline

bench-rollback: setup
	$(CARGO) bench -p deploy-agent-tests --bench rollback

bench-s3: setup test-tools
	$(CARGO) bench -p deploy-agent-tests --bench s3_upload

bench-daemon: setup
	$(CARGO) bench -p deploy-agent-tests --bench daemon

ci: lint test
