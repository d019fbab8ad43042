"""Build a C source into a shared library on first use and load it with ctypes (which releases the GIL per call).

Shared by the CPU kernels (``bitmask_cpu.py``, ``decode_cpu.py``). The system C compiler (``cc``, needed by
``torch.compile`` on CPU too) builds with the caller's flags (``-march=native``: the library is built for the
machine it runs on), once per machine; the shared object is cached under ``~/.cache/strictcall`` (or
``set_cache_dir``'s), keyed by the source, the flags, the compiler and the CPU, and written atomically so
concurrent builders never see half a file.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

_cache_root: Path | None = None


def set_cache_dir(directory: Path) -> None:
    """Where built kernels are kept (the server passes its cache directory; default ``~/.cache/strictcall``)."""
    global _cache_root
    _cache_root = Path(directory)


def _cache_dir() -> Path:
    preferred = _cache_root or Path.home() / ".cache" / "strictcall"
    for base in (preferred, Path(tempfile.gettempdir()) / f"strictcall-{os.getuid()}"):
        try:
            base.mkdir(parents=True, exist_ok=True)
            if os.access(base, os.W_OK):
                return base
        except OSError:
            continue
    raise OSError("no writable cache directory for the native kernels")


def cpu_flags_line() -> str:
    """The CPU's feature flags as /proc/cpuinfo lists them (its `flags` or `Features` line), else the processor name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def build_library(name: str, source: str, flags: list[str]) -> ctypes.CDLL:
    """The library built from `source` (cached); OSError when there is no compiler or it fails."""
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        raise OSError("no C compiler (cc, gcc or clang) on PATH")
    key = hashlib.sha256("\0".join([source, *flags, compiler, platform.machine(), cpu_flags_line()]).encode())
    target = _cache_dir() / f"{name}-{key.hexdigest()[:16]}.so"
    if not target.exists():
        with tempfile.TemporaryDirectory(dir=target.parent) as work:
            source_path = Path(work) / f"{name}.c"
            source_path.write_text(source)
            built = Path(work) / f"{name}.so"
            result = subprocess.run([compiler, *flags, "-o", str(built), str(source_path)], capture_output=True, text=True)
            if result.returncode != 0:
                raise OSError(f"{compiler} failed: {result.stderr.strip()[:500]}")
            os.replace(built, target)  # atomic: a concurrent builder never sees half a file
    return ctypes.CDLL(str(target))
