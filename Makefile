# snapfusion — the two commands:  make demo   and   make test
# Both install what is missing (Debian packages, a virtual environment in .venv), build, run.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
APT_PACKAGES := libxnnpack-dev libpthreadpool-dev libcpuinfo-dev gcc make
CC ?= cc
# CI=true (set by .ci/run) turns warnings into errors.
ifeq ($(CI),true)
SF_WERROR := 1
endif
export SF_WERROR

ENGINE_SRC := $(wildcard csrc/*.c)
ENGINE_HDR := $(wildcard csrc/*.h csrc/include/*.h csrc/python/*.h)
GLUE_SRC := $(wildcard csrc/python/*.c)
CTEST_SRC := $(wildcard tests/c/test_*.c)
CFLAGS_C := -std=c11 -g -O1 -Wall -Wextra -Wshadow -Wstrict-prototypes -Werror \
            -Wno-missing-field-initializers -D_GNU_SOURCE -Icsrc/include -Icsrc -Itests/c
SAN := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
LIBS := -lXNNPACK -lpthreadpool -lm -lpthread

.PHONY: demo test test-c test-py build deps apt venv clean bench train-default sf-txt2img
.SECONDARY:

DEMO_PROMPT ?= a red circle above a small blue square
demo: build
	$(PY) -m snapfusion generate "$(DEMO_PROMPT)" -o demo.png --upscale 4
	@echo "demo.png: the embedded default model's picture of \"$(DEMO_PROMPT)\" (make demo DEMO_PROMPT=... for another)"

test: build test-c test-py

# ---- set-up ---------------------------------------------------------------------------------
apt: $(VENV)/.apt-stamp
$(VENV)/.apt-stamp:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	@mkdir -p $(VENV) && touch $@

venv: $(VENV)/.venv-stamp
$(VENV)/.venv-stamp: pyproject.toml | $(VENV)/.apt-stamp
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "setuptools>=64" wheel numpy
	$(PIP) install -q -e ".[test]" --no-build-isolation
	touch $@

deps: apt venv

# ---- build ----------------------------------------------------------------------------------
build: deps snapfusion/_engine.stamp
snapfusion/_engine.stamp: $(ENGINE_SRC) $(GLUE_SRC) $(ENGINE_HDR) setup.py
	$(PY) setup.py -q build_ext --inplace
	touch $@

# ---- tests ----------------------------------------------------------------------------------
# C tests without Python, under AddressSanitizer + UndefinedBehaviorSanitizer. The engine is
# compiled once (one object per source) and each test links against it.
ENGINE_OBJ := $(patsubst csrc/%.c,build-c/obj/%.o,$(ENGINE_SRC))
build-c/obj/%.o: csrc/%.c $(ENGINE_HDR) | $(VENV)/.apt-stamp
	@mkdir -p build-c/obj
	$(CC) $(CFLAGS_C) $(SAN) -c -o $@ $<

build-c/%: tests/c/%.c $(ENGINE_OBJ) tests/c/sf_test.h
	$(CC) $(CFLAGS_C) $(SAN) -o $@ $< $(ENGINE_OBJ) $(LIBS)

test-c: $(patsubst tests/c/%.c,build-c/%,$(CTEST_SRC))
	@set -e; for t in $^; do echo "== $$t"; ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ./$$t; done

# ---- command-line tool: text-to-image in C (csrc/tools/, not part of the Python extension) --
# The engine is compiled again with the extension's optimization flags (setup.py), so the tool
# computes the same numbers as snapfusion._engine.
TOOL_CFLAGS := -std=c11 -O3 -fno-math-errno -Wall -Wextra -Wshadow -Wstrict-prototypes -Werror \
               -Wno-missing-field-initializers -D_GNU_SOURCE -Icsrc/include -Icsrc
TOOL_OBJ := $(patsubst csrc/%.c,build-c/tool-obj/%.o,$(ENGINE_SRC))
build-c/tool-obj/%.o: csrc/%.c $(ENGINE_HDR) | $(VENV)/.apt-stamp
	@mkdir -p build-c/tool-obj
	$(CC) $(TOOL_CFLAGS) -c -o $@ $<

build-c/sf-txt2img: csrc/tools/sf_txt2img.c $(TOOL_OBJ)
	$(CC) $(TOOL_CFLAGS) -o $@ $< $(TOOL_OBJ) $(LIBS)

sf-txt2img: build-c/sf-txt2img

test-py: build
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q tests/python

# The whole SnapFusion chain on the synthetic world, from nothing (see docs/training.md);
# BUDGET minutes in all plus MORE minutes of extra step distillation, then TEACHER_MORE minutes
# more teacher (a comma-separated list: continuations) and a student rebuilt from it, distilled
# REDISTILL minutes, then DATA_STUDENT minutes (a list: continuations) of training the final
# student on the world's data, without the blocks in DATA_REMOVE, and last PARTIAL_TUNE minutes
# of tuning it on partial captions (the shipped model has none), then installed as the
# package's default (snapfusion/models/). The shipped model's GPU steps, on one H100:
# DEVICE=cuda BUDGET=8 MORE=2.7 TEACHER_MORE=5,6 REDISTILL=5 DATA_STUDENT=6,3.4
# DATA_REMOVE=mid_block.resnets.1,up_blocks.1.attentions.2,down_blocks.2.attentions.0; its
# decoder was then trained on a CPU (docs/training.md). On 2 CPU cores give it hours.
# Re-running resumes the same run.
BUDGET ?= 120
DEVICE ?= cpu
MORE ?= 0
TEACHER_MORE ?= 0
REDISTILL ?= 0
DATA_STUDENT ?= 0
DATA_REMOVE ?=
PARTIAL_TUNE ?= 0
train-default: build
	OMP_WAIT_POLICY=PASSIVE $(PY) scripts/train_default.py --out build/train-default --device $(DEVICE) --budget-minutes $(BUDGET) --distill-more $(MORE) --teacher-more $(TEACHER_MORE) --redistill $(REDISTILL) --data-student $(DATA_STUDENT) --data-remove "$(DATA_REMOVE)" --partial-tune $(PARTIAL_TUNE) --ship

bench: build
	$(PY) benchmarks/bench_ops.py

clean:
	rm -rf build build-c snapfusion/_engine*.so snapfusion/_engine.stamp *.egg-info
