"""Build gemma4stack._core from csrc/ (hwloc, OpenBLAS, pthreads).

Metadata lives in pyproject.toml; this file only describes the extension.
Every .c under csrc/ is compiled except fuzz harnesses (csrc/fuzz/) and
the Arm-only kernels when not on Arm. System libraries come from Debian:
libhwloc-dev (hwloc 2.x) and libopenblas-dev.
"""
import glob
import os
import platform
import subprocess

from setuptools import Extension, setup


def pkg_config(*args):
    try:
        out = subprocess.run(["pkg-config", *args], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return out.split()


def sources():
    srcs = sorted(glob.glob("csrc/**/*.c", recursive=True))
    skip = ("csrc/fuzz/",)
    return [s for s in srcs if not s.startswith(skip)]


cflags = ["-O3", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
          "-fno-strict-aliasing", "-fvisibility=hidden", "-pthread"]
if os.environ.get("GEMMA4STACK_DEBUG"):
    cflags = [f for f in cflags if f != "-O3"] + ["-O0", "-g"]
if os.environ.get("GEMMA4STACK_SANITIZE"):
    cflags += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"]

include_dirs = ["csrc"] + [f[2:] for f in pkg_config("--cflags-only-I", "hwloc", "openblas") if f.startswith("-I")]
include_dirs += [d for d in ("/usr/include/x86_64-linux-gnu/openblas-pthread",
                             "/usr/include/aarch64-linux-gnu/openblas-pthread") if os.path.isdir(d)]
libs = ["hwloc", "openblas", "m", "dl", "pthread"]
ldflags = ["-pthread"] + [f for f in pkg_config("--libs-only-L", "openblas")]
if os.environ.get("GEMMA4STACK_SANITIZE"):
    ldflags += ["-fsanitize=address,undefined"]

# Compile the ~60 C files on every CPU (distutils' build_ext --parallel); GEMMA4STACK_BUILD_JOBS
# overrides (1 = one at a time).
jobs = int(os.environ.get("GEMMA4STACK_BUILD_JOBS") or os.cpu_count() or 1)

setup(
    options={"build_ext": {"parallel": jobs}},
    ext_modules=[
        Extension(
            "gemma4stack._core",
            sources=sources(),
            include_dirs=include_dirs,
            libraries=libs,
            extra_compile_args=cflags,
            extra_link_args=ldflags,
            define_macros=[("G4_ARCH_" + platform.machine().upper(), "1")],
        )
    ],
)
