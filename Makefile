# One set of commands for people and CI. `make help` lists them.
.PHONY: help setup test-tools browser-tools screenshots plugins deploy-local test lint fmt docs bench-plugins bench-db bench-pipeline bench-rollback bench-s3 bench-daemon bench-fleet bench-progressive bench-console ci

CARGO ?= cargo

help:
	@echo "make setup          install the wasm32-wasip2 target (rustup does not auto-install it here)"
	@echo "make test-tools     install s3s-fs, boto3 and componentize-py for the tests, once, under target/tools (make test does)"
	@echo "make browser-tools  install Debian's Chromium (apt, as root) and Playwright (npm ci, tests/browser) for the console's browser test (make test does)"
	@echo "make screenshots    run the console's browser test and copy its screenshots into docs/console/ (the README shows them)"
	@echo "make plugins        build every plugin for wasm32-wasip2 (release, size-optimised)"
	@echo "make deploy-local   the main job: deploy the example app to the local environment (SQLite, local target)"
	@echo "make test           the whole test suite (builds the plugins once, then runs every test)"
	@echo "make docs           regenerate docs/wit-reference.md from the WIT doc comments (a test checks it is current)"
	@echo "make lint           cargo fmt --check and clippy -D warnings over host, tests and plugins"
	@echo "make bench-plugins  plugin runtime benchmark (release build), prints p50/p90"
	@echo "make bench-db       migrations vs sqlx, backup vs pg_dump (throwaway PostgreSQL; several minutes)"
	@echo "make bench-pipeline the full local pipeline, per stage, next to the runbook script it replaces"
	@echo "make bench-rollback emergency rollback: --app-only and --full (100 MB SQLite) next to the runbook script; --full on 1 GB PostgreSQL next to pg_restore"
	@echo "make bench-s3       a 1 GiB backup to a local S3 server: the S3 plugin next to aws s3 cp"
	@echo "make bench-daemon   the daemon: 500 triggers across 50 environments (throughput, p99) and idle memory with 4 plugins"
	@echo "make bench-progressive a canary's abort: failed analysis to 100 % stable traffic, next to the poll interval"
	@echo "make bench-fleet    a fleet on one PostgreSQL state: trigger latency (SQLite vs PostgreSQL), claim latency, 1 vs 3 agents, takeover after a kill"
	@echo "make bench-console  the console's board with 50 environments and 1,000 runs: server time, page weight, Chromium's first render, next to the JSON API"
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

# The console's browser test drives Debian's Chromium with Playwright (playwright-core: no
# browser download, which this network refuses).
browser-tools:
	test -x /usr/bin/chromium || { test "$$(id -u)" = 0 || { echo "the browser test needs Debian's chromium: apt-get install chromium, as root" >&2; exit 1; }; \
	  apt-get install -y -qq --no-install-recommends chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; }; }
	test -d tests/browser/node_modules/playwright-core || (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)

screenshots: setup test-tools browser-tools
	$(CARGO) test -p deploy-agent-tests --test e2e the_console_in_a_browser
	mkdir -p docs/console
	cp target/console-shots/board.png target/console-shots/run.png target/console-shots/board-phone.png docs/console/

plugins: setup
	cd plugins && $(CARGO) build --release --target wasm32-wasip2 --workspace

deploy-local: plugins
	$(CARGO) run -p deploy-agent -- deploy --env local

test: setup test-tools browser-tools
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
	$(CARGO) bench -p deploy-agent-tests --bench rollback_pg

bench-s3: setup test-tools
	$(CARGO) bench -p deploy-agent-tests --bench s3_upload

bench-daemon: setup
	$(CARGO) bench -p deploy-agent-tests --bench daemon

bench-fleet: setup
	$(CARGO) bench -p deploy-agent-tests --bench fleet

bench-progressive: setup
	$(CARGO) bench -p deploy-agent-tests --bench progressive

bench-console: setup browser-tools
	$(CARGO) bench -p deploy-agent-tests --bench console

ci: lint test
