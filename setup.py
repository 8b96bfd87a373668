"""Build the one compiled module, ``litestream_fast._walcore``, from ``src/_walcore.pyx``.

Metadata lives in pyproject.toml; this file only declares the extension, because
setuptools cannot express Cython extensions declaratively. The .pyx is cythonized at
build time (Cython is pinned in build-system.requires); no generated C is committed.
``LITESTREAM_FAST_DEBUG=1`` builds with ``-O0 -g``, line tracing and bounds checks.
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("LITESTREAM_FAST_DEBUG") == "1"

directives = {
    "language_level": 3,
    "embedsignature": True,
    "boundscheck": DEBUG,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": DEBUG,
}
macros = []
if DEBUG:
    directives["linetrace"] = True
    macros += [("CYTHON_TRACE_NOGIL", "1")]
    cflags = ["-O0", "-g"]
else:
    cflags = ["-O3"]

# The vendored LZ4 block decoder and XXH32 (src/vendor/lz4) are compiled into the same
# module with hidden symbols, so they never clash with python-lz4's own copy.
VENDOR = "src/vendor/lz4"
ext = Extension(
    "litestream_fast._walcore",
    ["src/_walcore.pyx", f"{VENDOR}/lz4.c", "src/xxhash_build.c"],
    include_dirs=[VENDOR],
    extra_compile_args=[*cflags, "-fvisibility=hidden"],
    define_macros=[*macros, ("XXH_NAMESPACE", "lsf_"), ("LZ4LIB_VISIBILITY", ""),
                   ("LZ4_MEMORY_USAGE", "18")],
)

setup(ext_modules=cythonize([ext], compiler_directives=directives))
