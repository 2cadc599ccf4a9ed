# The two commands: `make dev` (local stack on http://127.0.0.1:3000) and `make test` (everything CI runs).
# Both install what they need into .venv (project, python3.13) and .venv-tools (SAM CLI, kept apart
# because it pins its own boto3 and pydantic).

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.installed

include make/sam.mk

# The Lambda runtime is python3.13: the project runs on the same interpreter (found as sam.mk finds it;
# PYTHON=/path/to/python3.13 to choose another). No fallback to whatever python3 is: a .venv on another
# version would type-check and test code the runtime never runs.
PYTHON ?= $(SAM_PYTHON313)

PYTEST_ARGS ?=

.PHONY: help dev test install sweep-blobs lint typecheck unit integration e2e checks format pre-commit token openapi layer-requirements events replay watch dashboard clean

## help: list the targets
help:
	@grep -hE '^## ' $(MAKEFILE_LIST) | sed 's/^## /  /'

$(VENV_STAMP): pyproject.toml clients/python/pyproject.toml
	@"$(PYTHON)" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null || { \
	  echo "python3.13 not found (looked on PATH and in pyenv; got '$(PYTHON)'); set PYTHON=/path/to/python3.13" >&2; \
	  exit 1; }
	"$(PYTHON)" -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]' -e 'clients/python[cli]'
	touch $@

## install: create .venv with the pinned runtime and dev dependencies, and a redis-server
install: $(VENV_STAMP) redis-server

# A real redis-server for the local stack and the tests (scripts/ensure_redis.sh says where from).
.PHONY: redis-server
redis-server: $(VENV_STAMP)
	@scripts/ensure_redis.sh $(PY)

## dev: run the whole local stack (moto, dev OIDC issuer, gateway on :3000) until Ctrl-C
dev: $(VENV_STAMP) redis-server
	$(PY) -m devstack

## token: print a dev token, e.g. make token SUB=alice SCOPE="state:read state:write"
SUB ?= dev
SCOPE ?= state:read state:write
token: $(VENV_STAMP)
	@$(PY) -m devstack.token --sub "$(SUB)" --scope "$(SCOPE)"

## events: print StateChanged events from the local stack's state-changes queue as they arrive (Ctrl-C stops)
events: $(VENV_STAMP)
	@$(PY) -m devstack.event_tail $(EVENTS_ARGS)

## watch: print the changes of a key (KEY=...) or of a prefix ending in ':' (PREFIX=...) from the local stack as
## they arrive; reconnects and resumes from its last cursor (Ctrl-C stops)
watch: $(VENV_STAMP)
	@$(PY) -m devstack.watch_client $(if $(KEY),--key "$(KEY)",--prefix "$(PREFIX)") --sub "$(SUB)" --scope "$(SCOPE)"

## dashboard: the running local stack's key figures (requests, latency, cache, locks, events) in a refreshing
##            table, read from its Prometheus endpoint (DASHBOARD_ARGS="--once" prints them once)
dashboard: $(VENV_STAMP)
	@$(PY) -m devstack.dashboard $(DASHBOARD_ARGS)

## replay: re-publish the publisher's dead-lettered events and the stream's S3 failure records (local stack)
replay: $(VENV_STAMP)
	$(PY) -m devstack.replay $(REPLAY_ARGS)

# make test runs the suite on pytest-xdist workers, each with its own moto server, redis-server, tables, temp dirs
# and local stacks; a test file stays on one worker (pyproject's addopts), so a module's stack starts once. The
# suite run serially already keeps about one core busy, and the tests with a time budget fail first when the CPU
# is oversubscribed: one worker per core (docs/testing.md). PYTEST_WORKERS=0 runs the suite in one process.
PYTEST_WORKERS ?= $(shell getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)

## test: lint, types, generated files, unit + integration + end-to-end tests, sam validate --lint, sam build
##       (checks and the SAM steps run beside pytest, their output printed after it; any failure fails the target)
test: $(VENV_STAMP) $(TOOLS_STAMP) redis-server
	@logs=$$(mktemp -d); \
	$(MAKE) --no-print-directory checks >"$$logs/checks.log" 2>&1 & checks=$$!; \
	$(MAKE) --no-print-directory validate sam-build >"$$logs/sam.log" 2>&1 & sam=$$!; \
	status=0; \
	echo "$(PY) -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)"; \
	$(PY) -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS) || status=1; \
	wait $$checks && echo "=== make checks: passed" || { echo "=== make checks: FAILED"; status=1; }; \
	cat "$$logs/checks.log"; \
	wait $$sam && echo "=== make validate sam-build: passed" || { echo "=== make validate sam-build: FAILED"; status=1; }; \
	cat "$$logs/sam.log"; \
	rm -rf "$$logs"; \
	exit $$status

## checks: ruff (lint + format), mypy (strict: the core, the functions, the local stack), the core's import
##         contracts, generated files up to date
checks: $(VENV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	PYTHONPATH=layers/state_core $(VENV)/bin/lint-imports
	$(PY) scripts/layer_requirements.py --check
	$(PY) scripts/openapi.py --check
	$(PY) scripts/cost_model.py --check

## format: ruff format, then ruff check --fix: what `make checks` flags, fixed where ruff can
format: $(VENV_STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

## pre-commit: install the git hook (.pre-commit-config.yaml) running the ruff checks of `make checks` on each commit
pre-commit: $(VENV_STAMP)
	$(VENV)/bin/pre-commit install

## verify: the long forms of the correctness checks (about 14 min): all 25,200 cache interleavings, 100 history seeds,
##         5,000 schemathesis cases against the OpenAPI document
.PHONY: verify
verify: $(VENV_STAMP) redis-server
	STATE_VERIFY=1 $(PY) -m pytest -m verify --timeout=3600 -s $(PYTEST_ARGS)

## bench: benchmarks against least-work baselines, one table (docs/performance.md); BENCH_ARGS=--help for options
.PHONY: bench
bench: $(VENV_STAMP) redis-server
	$(PY) -m benchmarks $(BENCH_ARGS)

## load: a mixed workload (locust) against `make dev` on :3000, or any API_URL with TOKEN or TOKEN_COMMAND;
##       throughput, p50/p99 and errors per operation; LOAD_ARGS=--help for the options (docs/performance.md)
.PHONY: load
load: $(VENV_STAMP)
	$(PY) -m benchmarks.load $(LOAD_ARGS)

## unit / integration / e2e: one scope of the test suite
unit integration e2e: $(VENV_STAMP) redis-server
	$(PY) -m pytest -m $@ $(PYTEST_ARGS)

## sweep-blobs: collect value blobs nothing refers to, in the running local stack (TABLE, ENDPOINT to override)
TABLE ?= state-service-local-StateTable
ENDPOINT ?= http://127.0.0.1:5000
sweep-blobs: $(VENV_STAMP)
	$(PY) scripts/sweep_blobs.py --table "$(TABLE)" --endpoint-url "$(ENDPOINT)"

## backfill-listing: give the listing index the keys written before it existed, in the running local stack (TABLE,
##                   ENDPOINT to override; BACKFILL_ARGS="--rate 50" and the like; resumable, see the script)
.PHONY: backfill-listing
backfill-listing: $(VENV_STAMP)
	$(PY) scripts/backfill_listing.py --table "$(TABLE)" --endpoint-url "$(ENDPOINT)" $(BACKFILL_ARGS)

## reencrypt: re-encrypt every sensitive value (inline, large values' blobs, change proposals) under KEY_ID (a KMS key
##            ARN or alias), in the running local stack, online and resumable; fails while any was left, so run it
##            again (TABLE, ENDPOINT to override; REENCRYPT_ARGS="--redis-url redis://..." and the like)
.PHONY: reencrypt
reencrypt: $(VENV_STAMP)
	$(PY) scripts/reencrypt.py --table "$(TABLE)" --endpoint-url "$(ENDPOINT)" --key-id "$(KEY_ID)" $(REENCRYPT_ARGS)

## openapi: regenerate docs/openapi.json from the handlers' routes and models
openapi: $(VENV_STAMP)
	$(PY) scripts/openapi.py

## layer-requirements: regenerate layers/state_core/requirements.txt from pyproject.toml's pins
layer-requirements: $(VENV_STAMP)
	$(PY) scripts/layer_requirements.py

## clean: remove build output and local state (not the venvs)
clean:
	rm -rf .aws-sam .local .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
