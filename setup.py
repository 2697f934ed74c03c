"""Build of the snapfusion C extension with plain setuptools.

Switches (environment variables):
  SF_WERROR=1             add -Werror (CI)
  SF_SANITIZE=address,... build with -fsanitize=... (debugging)
  SF_EXTRA_CFLAGS="..."   extra compiler flags (e.g. -march=native)
"""

from __future__ import annotations

import os
import shlex
import subprocess
from glob import glob

import numpy
from setuptools import Extension, setup


def xnnpack_version() -> str:
    """Version of the Debian XNNPACK package we link against (for version reports)."""
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "libxnnpack-dev"],
            capture_output=True, text=True, check=False,
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


cflags = ["-std=c11", "-O3", "-Wall", "-Wextra", "-Wshadow", "-Wstrict-prototypes",
          "-Wno-missing-field-initializers", "-fno-math-errno", "-fvisibility=hidden"]
ldflags: list[str] = []
if os.environ.get("SF_WERROR") == "1":
    cflags.append("-Werror")
if os.environ.get("SF_SANITIZE"):
    san = "-fsanitize=" + os.environ["SF_SANITIZE"]
    cflags += [san, "-fno-omit-frame-pointer", "-fno-sanitize-recover=all"]
    ldflags.append(san)
cflags += shlex.split(os.environ.get("SF_EXTRA_CFLAGS", ""))

# csrc/tools/ holds command-line programs (each with a main; built by the Makefile): not globbed.
sources = sorted(glob("csrc/*.c")) + sorted(glob("csrc/python/*.c"))
headers = sorted(glob("csrc/*.h")) + sorted(glob("csrc/include/*.h")) + sorted(
    glob("csrc/python/*.h"))

engine = Extension(
    "snapfusion._engine",
    sources=sources,
    depends=headers,
    include_dirs=["csrc/include", "csrc", "csrc/python", numpy.get_include()],
    libraries=["XNNPACK", "pthreadpool", "m", "pthread"],
    define_macros=[("SF_XNNPACK_VERSION", f'"{xnnpack_version()}"'), ("_GNU_SOURCE", "1")],
    extra_compile_args=cflags,
    extra_link_args=ldflags,
)

setup(ext_modules=[engine])
