# gemma4stack - one command for each promise of the README.
#   make demo   set everything up, then detect -> recommend -> generate (the main job)
#   make test   set everything up, then run the C unit tests (Check) and pytest
# Set-up installs Debian packages when missing (needs root, as on CI) and the
# package itself in editable mode with its test dependencies.

PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
SHARED ?= $(abspath ../shared)
MODEL ?= $(SHARED)/models/TinyStories-656K-Q8_0.gguf
DEB_PKGS := python3-dev libhwloc-dev libopenblas-dev check pkg-config
CC ?= cc

export GEMMA4STACK_SHARED ?= $(SHARED)

.PHONY: all deps sysdeps install demo test test-c test-py clean

all: install

sysdeps:
	@missing=""; for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# torch is pinned and installed first: 2.13.0 is the CPU build available locally;
# any other version pulls gigabytes of CUDA packages.
deps: sysdeps
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q --no-build-isolation -e '.[test]'

install: sysdeps
	$(PIP) install -q --no-build-isolation -e .

demo: install
	gemma4stack quickstart --model $(MODEL)

# ---- C unit tests (Check) --------------------------------------------------
C_SRCS := $(filter-out csrc/python/% csrc/fuzz/%,$(shell find csrc -name '*.c' | sort))
C_TESTS := $(patsubst tests/c/%.c,tests/c/build/%,$(wildcard tests/c/test_*.c))
C_FLAGS := -O2 -g -std=gnu11 -Wall -Wextra -Wno-unused-parameter -pthread -Icsrc \
           $(shell pkg-config --cflags hwloc openblas 2>/dev/null)
C_LIBS := $(shell pkg-config --libs check 2>/dev/null) -lhwloc -lopenblas -lm -ldl -pthread

tests/c/build/libg4.a: $(C_SRCS) $(shell find csrc -name '*.h')
	@mkdir -p tests/c/build/obj
	@rm -f $@
	@for s in $(C_SRCS); do \
	  o=tests/c/build/obj/$$(echo $$s | tr / _).o; \
	  $(CC) $(C_FLAGS) $(C_EXTRA) -c $$s -o $$o || exit 1; done
	ar rcs $@ tests/c/build/obj/*.o

tests/c/build/%: tests/c/%.c tests/c/build/libg4.a tests/c/g4test.h
	$(CC) $(C_FLAGS) $(C_EXTRA) $< tests/c/build/libg4.a $(C_LIBS) -o $@

test-c: sysdeps $(C_TESTS)
	@set -e; for t in $(C_TESTS); do echo "== $$t"; CK_FORK=yes $$t; done

test-py: deps
	$(PYTHON) -m pytest -q tests

test: deps test-c test-py

clean:
	rm -rf build tests/c/build gemma4stack/*.so *.egg-info
