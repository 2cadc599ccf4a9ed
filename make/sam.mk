# SAM CLI targets, included by the root Makefile (`include make/sam.mk`) and usable
# alone from the repository root: `make -f make/sam.mk validate sam-build`.
#
# aws-sam-cli pins its own boto3 and pydantic, so it lives in its own venv
# ($(TOOLS_VENV)), never in the project's .venv. Pins: requirements-tools.txt.

# Including this file must not change the includer's default goal.
SAM_MK_PREVIOUS_DEFAULT_GOAL := $(.DEFAULT_GOAL)

TOOLS_VENV ?= .venv-tools
TOOLS_REQUIREMENTS ?= requirements-tools.txt
# Reinstalled when the pins change.
TOOLS_STAMP ?= $(TOOLS_VENV)/.installed
SAM ?= $(TOOLS_VENV)/bin/sam
SAM_TEMPLATE ?= template.yaml
SAM_BUILD_DIR ?= .aws-sam/build

# The real python3.13 executable, not a pyenv shim: `sam build` runs `python3.13`
# from PATH for the python3.13 runtime, and a shim answers only when 3.13 is one of
# pyenv's active versions. Found once, on first use (so including this file costs
# nothing for other targets). Override with SAM_PYTHON313=/path/to/python3.13.
SAM_FIND_PYTHON313 = \
	py=$$(command -v python3.13 2>/dev/null); \
	case "$$py" in \
	  */shims/*) \
	    py=$$(pyenv which python3.13 2>/dev/null) || { \
	      root=$$(pyenv root 2>/dev/null); py=; \
	      for v in $$(pyenv versions --bare 2>/dev/null | grep -E '^3\.13(\.[0-9]+)?$$' | sort -rV); do \
	        if [ -x "$$root/versions/$$v/bin/python3.13" ]; then py="$$root/versions/$$v/bin/python3.13"; break; fi; \
	      done; } ;; \
	esac; \
	echo "$$py"
SAM_PYTHON313 ?= $(eval SAM_PYTHON313 := $$(shell $$(SAM_FIND_PYTHON313)))$(SAM_PYTHON313)

# No telemetry; a region for commands that insist on one (nothing here calls AWS);
# python3.13's own directory first on PATH for the builders.
SAM_ENV = SAM_CLI_TELEMETRY=0 \
	AWS_DEFAULT_REGION="$${AWS_DEFAULT_REGION:-$${AWS_REGION:-us-east-1}}" \
	PATH="$(patsubst %/,%,$(dir $(SAM_PYTHON313))):$$PATH"

$(TOOLS_STAMP): $(TOOLS_REQUIREMENTS)
	@test -x "$(SAM_PYTHON313)" || { \
	  echo "python3.13 not found (looked on PATH and in pyenv); set SAM_PYTHON313=/path/to/python3.13" >&2; \
	  exit 1; }
	"$(SAM_PYTHON313)" -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r $(TOOLS_REQUIREMENTS)
	touch $@

## tools: install the pinned SAM CLI (and its cfn-lint) into .venv-tools, once
tools: $(TOOLS_STAMP)

## validate: SAM validation of template.yaml (and the example consumer's) plus cfn-lint
EXAMPLE_TEMPLATES ?= $(wildcard examples/*/template.yaml)
validate: $(TOOLS_STAMP)
	$(SAM_ENV) $(SAM) validate --lint --template $(SAM_TEMPLATE)
	$(foreach t,$(EXAMPLE_TEMPLATES),$(SAM_ENV) $(SAM) validate --lint --template $(t) &&) true

## sam-build: build the functions and the state_core layer into .aws-sam/
sam-build: $(TOOLS_STAMP)
	@test -x "$(SAM_PYTHON313)" || { echo "python3.13 not found; set SAM_PYTHON313" >&2; exit 1; }
	$(SAM_ENV) $(SAM) build --template $(SAM_TEMPLATE) --build-dir $(SAM_BUILD_DIR)
	"$(SAM_PYTHON313)" scripts/check_layer_bytecode.py $(SAM_BUILD_DIR)/StateCoreLayer/python

.PHONY: tools validate sam-build

.DEFAULT_GOAL := $(SAM_MK_PREVIOUS_DEFAULT_GOAL)
