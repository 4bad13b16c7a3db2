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
# TORCH=cpu: the pinned torch's CPU build, from PyTorch's CPU index. TORCH=cuda: the same version from
# the default index (PyPI), whose Linux wheel is the CUDA build (with its nvidia-* wheels). The default
# is the build set up last (cpu on a fresh checkout), so `make test` after a CUDA setup keeps CUDA.
TORCH ?= $(if $(wildcard $(VENV)/.installed-cuda),cuda,cpu)
ifeq ($(filter $(TORCH),cpu cuda),)
$(error TORCH=$(TORCH): give cpu (the default) or cuda)
endif
TORCH_PIN := $(shell grep -m1 -E '^torch==' requirements.lock)
# Only torch comes from the CPU index (one lookup there); its dependencies are pinned in requirements.lock.
TORCH_INDEX_cpu := --no-deps --index-url https://download.pytorch.org/whl/cpu
TORCH_INDEX_cuda :=
STAMP := $(VENV)/.installed$(if $(filter cuda,$(TORCH)),-cuda)
OTHER_STAMP := $(VENV)/.installed$(if $(filter cuda,$(TORCH)),,-cuda)

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
	$(if $(DRY_RUN),--dry-run) $(if $(ALLOW_NO_DERIVATIVES),--allow-no-derivatives)

.PHONY: help setup system curate publish demo-data test lint bench clean

help:
	@echo "make curate LANG=de,es [INPUT=dir] [OUTPUT=dir] [CORPORA=mustc,covost,fleurs] [RUNNER=profile] [BEAM_ARGS='...']"
	@echo "make publish REPO=ORG/NAME [OUTPUT=dir] [REVISION=branch] [PRIVATE=1] [DRY_RUN=1] [ALLOW_NO_DERIVATIVES=1]"
	@echo "make setup [TORCH=cpu|cuda] | make test | make lint | make bench | make demo-data DIR=dir | make clean"

system:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# A switch of TORCH uninstalls the other build first: it has the same version, so pip would keep it.
$(STAMP): requirements.lock pyproject.toml | system
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	rm -f $(OTHER_STAMP)
	if $(PY) -c 'import sys, torch; sys.exit((torch.version.cuda is None) == ("$(TORCH)" == "cpu"))' 2>/dev/null; \
	then $(PY) -m pip uninstall -q -y torch; fi
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH_INDEX_$(TORCH)) $(TORCH_PIN)
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
