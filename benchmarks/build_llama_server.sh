#!/usr/bin/env bash
# Build llama.cpp's llama-server for benchmarks/bench_serving.py (a benchmark-only build; never
# commit its output). The sources are the llama.cpp tree that the llama-cpp-python sdist vendors
# (vendor/llama.cpp), so the peer is the same llama.cpp that compare_llamacpp.py measures through
# llama-cpp-python. Kernels are compiled for this CPU's ISA with the GGML_* options that
# `python benchmarks/compare_llamacpp.py --cmake-args` reads from /proc/cpuinfo (GGML_NATIVE=OFF:
# see that script's docstring for why not -march=native).
#
#   benchmarks/build_llama_server.sh [BUILD_DIR]          # default /work/build-llama
#   LLAMA_CPP_PYTHON_VERSION=0.3.36 JOBS=2 NICE=15 benchmarks/build_llama_server.sh /tmp/llama
#
# Prints the path of the llama-server binary on its last line. Needs cmake, a C/C++ compiler and
# PyPI (pip download). Takes ~20-40 minutes of both cores on a 2-core machine.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
build_root="${1:-/work/build-llama}"
version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
jobs="${JOBS:-$(nproc)}"
nice_level="${NICE:-15}"
python="${PYTHON:-python3}"

mkdir -p "$build_root"
cd "$build_root"

sdist=$(ls llama_cpp_python-"$version".tar.gz 2>/dev/null || true)
if [ -z "$sdist" ]; then
  # --no-binary for this package only: ":all:" would also build pip's build dependencies
  # (cmake, ninja) from source just to read the sdist's metadata
  "$python" -m pip download --no-deps --no-binary llama-cpp-python -d . "llama-cpp-python==$version"
  sdist=llama_cpp_python-"$version".tar.gz
fi
src="$build_root/llama_cpp_python-$version/vendor/llama.cpp"
if [ ! -f "$src/CMakeLists.txt" ]; then
  tar xzf "$sdist"
fi

isa_args=$("$python" "$here/compare_llamacpp.py" --cmake-args)
echo "llama.cpp from llama-cpp-python $version; ISA: $isa_args" >&2

# Static libraries, so the binary does not pick up another libllama.so from the system;
# no curl (models are local files), no tests or examples.
# shellcheck disable=SC2086
nice -n "$nice_level" cmake -S "$src" -B "$build_root/build" \
  -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
  $isa_args >&2
nice -n "$nice_level" cmake --build "$build_root/build" --target llama-server -j "$jobs" >&2

bin="$build_root/build/bin/llama-server"
test -x "$bin"
"$bin" --version >&2 || true
echo "$bin"
