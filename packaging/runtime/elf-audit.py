#!/usr/bin/python3
"""Checks every ELF file under a staged package tree against what every target distribution has.

    packaging/runtime/elf-audit.py STAGE GLIBC_CEILING

1. No file needs a glibc symbol version newer than GLIBC_CEILING (the package's libc6 Depends; 2.34 is the
   hard limit set by RHEL 9 and Amazon Linux 2023, docs/install.md).
2. Every NEEDED library is either shipped in the tree or in BASE, what every target has installed.

Prints the highest version found and exits 1 on any violation. Stdlib only (it runs on the build machine).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

# glibc itself (libc, libm, libpthread, libdl, librt, libutil: stubs since 2.34, still present), the dynamic
# loaders, zlib (a dependency of rpm and dpkg, so on every host), and libgcc_s (glibc's pthread_cancel needs it,
# so every distribution installs it with glibc; Rust extension modules link it for unwinding).
BASE = frozenset(
    {
        "libc.so.6",
        "libm.so.6",
        "libpthread.so.0",
        "libdl.so.2",
        "librt.so.1",
        "libutil.so.1",
        "ld-linux-x86-64.so.2",
        "ld-linux-aarch64.so.1",
        "libz.so.1",
        "libgcc_s.so.1",
    }
)


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def is_elf(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(4) == b"\x7fELF"


def readelf(*args: str) -> str:
    return subprocess.run(["readelf", "-W", *args], capture_output=True, text=True, check=True).stdout


def main() -> int:
    stage, ceiling = Path(sys.argv[1]), sys.argv[2]
    elves = [p for p in sorted(stage.rglob("*")) if p.is_file() and not p.is_symlink() and is_elf(p)]
    shipped = {p.name for p in elves} | {p.name for p in stage.rglob("*.so*") if p.is_symlink()}
    problems: list[str] = []
    highest = ("0", "")
    for elf in elves:
        relative = "/" + str(elf.relative_to(stage))
        versions = set(re.findall(r"Name: GLIBC_([0-9.]+)", readelf("--version-info", str(elf))))
        for version in versions:
            if version_key(version) > version_key(highest[0]):
                highest = (version, relative)
            if version_key(version) > version_key(ceiling):
                problems.append(f"{relative} needs GLIBC_{version} (ceiling {ceiling})")
        for needed in re.findall(r"\(NEEDED\)\s+Shared library: \[([^]]+)\]", readelf("--dynamic", str(elf))):
            if needed not in BASE and needed not in shipped:
                problems.append(f"{relative} needs {needed}, neither shipped nor in the base set")
    print(f"elf-audit: {len(elves)} ELF files, highest GLIBC_{highest[0]} ({highest[1]})")
    for problem in problems:
        print(f"elf-audit: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
