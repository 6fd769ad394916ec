"""Compiling the kernels (csrc/): one shared library per instruction set, named after what went into it.

    python -m app.engine.native.build            # every variant this machine's compiler can make

`make serve`, `make test` and the image build run this once, so a server never waits for a compiler
(and the image needs none: it ships the three builds); a library that is missing or stale (other
sources or flags) is compiled on first use instead, in a few seconds. Plain C with pthreads
(csrc/pool.h says why not OpenMP).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCES = Path(__file__).with_name("csrc")
MAIN = SOURCES / "forward.c"  # includes the headers beside it
OUTPUT = Path(__file__).with_name("_compiled")

# Strict IEEE semantics: no contraction into FMA behind our back (the sources say where FMA goes),
# no reassociation, so every build computes the same operations in the same order.
COMMON_FLAGS = ("-O3", "-fPIC", "-shared", "-pthread", "-ffp-contract=off", "-fno-math-errno", "-std=gnu11")
# Each x86-64 variant and the flags it needs; "generic" is plain C for anything else.
ISA_FLAGS = {
    "avx512": ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni", "-mavx2", "-mfma", "-mf16c"),
    "avx2": ("-mavx2", "-mfma", "-mf16c"),
    "generic": (),
}


def compiler() -> str | None:
    """The C compiler to use: $CC, else cc or gcc on the PATH."""
    for candidate in (os.environ.get("CC"), "cc", "gcc"):
        if candidate and shutil.which(candidate):
            return candidate
    return None


def library_path(isa: str) -> Path:
    """Where the `isa` build of the current sources lives (named by a hash of sources and flags)."""
    digest = hashlib.sha256()
    for source in sorted(SOURCES.iterdir()):
        digest.update(source.name.encode() + source.read_bytes())
    digest.update(" ".join(COMMON_FLAGS + ISA_FLAGS[isa]).encode())
    return OUTPUT / f"tokenwire-{isa}-{digest.hexdigest()[:16]}.so"


def build(isa: str) -> Path:
    """The library for `isa`, compiled now unless an up-to-date one exists. Raises when it cannot be."""
    target = library_path(isa)
    if target.is_file():
        return target
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler (cc, gcc or $CC) to build the native kernels")
    OUTPUT.mkdir(parents=True, exist_ok=True)
    # Built beside the target and renamed into place: concurrent builders never load half a file.
    with tempfile.NamedTemporaryFile(dir=OUTPUT, suffix=".so.tmp", delete=False) as tmp:
        partial = Path(tmp.name)
    try:
        command = [cc, *COMMON_FLAGS, *ISA_FLAGS[isa], "-o", str(partial), str(MAIN), "-lm"]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"compiling the {isa} kernels failed: {result.stderr.strip()[-2000:]}")
        partial.chmod(0o755)  # readable by whoever serves (the image builds as root, serves as a user)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    for stale in OUTPUT.glob(f"tokenwire-{isa}-*.so"):  # builds of older sources (a process may still map one)
        if stale != target:
            stale.unlink(missing_ok=True)
    return target


def buildable_isas() -> list[str]:
    """The variants this machine's compiler can target (every x86-64 one on x86-64; generic elsewhere)."""
    import platform
    return list(ISA_FLAGS) if platform.machine() in ("x86_64", "AMD64") else ["generic"]


def main() -> int:
    for isa in buildable_isas():
        print(f"native kernels ({isa}): {build(isa)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
