# simulforge: `make curate LANG=de,es` builds a dataset, `make test` runs the suite.
# Every target installs what it needs (Debian packages, a .venv, pinned Python packages).

SHELL := /bin/bash
.DEFAULT_GOAL := help

# LANG on the command line is the user's list of target languages, not a locale: take the
# list, then give every recipe a UTF-8 locale of its own.
ifeq ($(origin LANG),command line)
LANGUAGES := $(LANG)
endif
override LANG := C.UTF-8
export LANG
export LC_ALL := C.UTF-8
export PYTHONUTF8 := 1

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
SF := $(VENV)/bin/simulforge
APT_PACKAGES := espeak-ng libespeak-ng1 ffmpeg
STAMP := $(VENV)/.installed

INPUT ?=
OUTPUT ?= out
CORPORA ?=
RUNNER ?=
BEAM_ARGS ?=
CURATE_FLAGS = $(if $(LANGUAGES),--langs $(LANGUAGES)) $(if $(INPUT),--input $(INPUT)) \
	--output $(OUTPUT) --overwrite $(if $(CORPORA),--corpora $(CORPORA)) $(if $(RUNNER),--runner-profile $(RUNNER))
# publish: the hub token comes from HF_TOKEN or `hf auth login`, never from the command line.
REPO ?=
REVISION ?=
PUBLISH_FLAGS = --repo-id $(REPO) $(if $(REVISION),--revision $(REVISION)) $(if $(PRIVATE),--private) \
	$(if $(DRY_RUN),--dry-run)

.PHONY: help setup system curate publish demo-data test lint bench clean

help:
	@echo "make curate LANG=de,es [INPUT=dir] [OUTPUT=dir] [CORPORA=mustc,covost,fleurs] [RUNNER=profile] [BEAM_ARGS='...']"
	@echo "make publish REPO=ORG/NAME [OUTPUT=dir] [REVISION=branch] [PRIVATE=1] [DRY_RUN=1]"
	@echo "make test | make lint | make bench | make demo-data DIR=dir | make clean"

system:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): requirements.lock pyproject.toml | system
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	$(PY) -m pip install -q --disable-pip-version-check --no-deps simuleval==1.1.4
	touch $@

setup: system $(STAMP)

curate: setup
	$(SF) curate $(CURATE_FLAGS) $(BEAM_ARGS)

publish: setup
	@test -n "$(REPO)" || { echo "make publish REPO=ORG/NAME [OUTPUT=dir] [REVISION=branch] [PRIVATE=1] [DRY_RUN=1]" >&2; exit 2; }
	$(SF) publish $(OUTPUT) $(PUBLISH_FLAGS)

demo-data: setup
	$(SF) demo-data $(or $(DIR),.cache/simulforge/demo)

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) -m bench.run $(BENCH_ARGS)

clean:
	rm -rf out .cache bench/out
