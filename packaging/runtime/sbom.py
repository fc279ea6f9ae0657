#!/usr/bin/python3
"""Writes the package's software bill of materials (CycloneDX 1.5 JSON) to stdout.

    packaging/runtime/sbom.py --version V --arch A --components COMPONENTS_TXT --site SITE_PACKAGES

Components: the bundled C runtime (CPython, OpenSSL, libffi, ... from the runtime build's components.txt) and
every Python distribution installed in SITE_PACKAGES, with its version and declared licence. Shipped at
/usr/share/doc/p0-ssh-agent/sbom.cdx.json, so a scanner on the host sees what the package bundles (a CVE in
one of them means a new package version, docs/install.md). Deterministic: SOURCE_DATE_EPOCH is the timestamp.
"""

from __future__ import annotations

import argparse
import email.parser
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path


def python_components(site: Path) -> list[dict[str, object]]:
    components = []
    for info in sorted(site.glob("*.dist-info")):
        metadata = email.parser.HeaderParser().parsestr((info / "METADATA").read_text(errors="replace"))
        name, version = metadata["Name"], metadata["Version"]
        component: dict[str, object] = {
            "type": "library",
            "bom-ref": f"pkg:pypi/{name.lower()}@{version}",
            "name": name,
            "version": version,
            "purl": f"pkg:pypi/{name.lower()}@{version}",
        }
        licence = metadata.get("License-Expression") or metadata.get("License")
        if licence and len(licence) < 100:
            component["licenses"] = [{"license": {"name": licence.strip()}}]
        components.append(component)
    return components


def c_components(listing: Path) -> list[dict[str, object]]:
    components = []
    for line in listing.read_text().splitlines():
        name, version, origin = line.split("\t")
        components.append(
            {
                "type": "library" if name != "CPython" else "application",
                "bom-ref": f"runtime:{name}@{version}",
                "name": name,
                "version": version,
                "description": origin,
            }
        )
    return components


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--version", required=True)
    parser.add_argument("--arch", required=True)
    parser.add_argument("--components", type=Path, required=True)
    parser.add_argument("--site", type=Path, required=True)
    args = parser.parse_args()
    stamp = datetime.fromtimestamp(int(os.environ.get("SOURCE_DATE_EPOCH", "0")), UTC)
    bom = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": {
            "timestamp": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "component": {
                "type": "application",
                "bom-ref": f"pkg:generic/p0-ssh-agent@{args.version}?arch={args.arch}",
                "name": "p0-ssh-agent",
                "version": args.version,
            },
        },
        "components": c_components(args.components)
        + [c for c in python_components(args.site) if c["name"] != "p0-ssh-agent"],
    }
    json.dump(bom, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
