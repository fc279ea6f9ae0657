#!/usr/bin/python3
"""CHANGELOG.md (Keep a Changelog) to the chglog YAML that nfpm turns into changelog.Debian.gz and %changelog.

    packaging/changelog.py CHANGELOG.md VERSION [RELEASE] > build/changelog.yml

One entry per released section ("## [X.Y.Z] - YYYY-MM-DD"); the "Unreleased" section becomes VERSION's entry,
dated SOURCE_DATE_EPOCH, unless VERSION has a section of its own. Entries carry the package version
VERSION-RELEASE (RELEASE: nfpm.yaml's, default 1), as Debian and rpm changelogs do. Each bullet's first sentence is one line of the
package changelog (the full text stays in /usr/share/doc/p0-ssh-agent/CHANGELOG.md). Stdlib only; emits JSON,
which is YAML, so no YAML library is needed on the build machine.
"""

from __future__ import annotations

import json
import os
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

PACKAGER = "P0 SSH Agent maintainers <p0-ssh-agent@example.invalid>"
LINE = 72


def first_sentence(bullet: str) -> str:
    text = re.sub(r"[`*]|\[([^]]*)\]\([^)]*\)", r"\1", " ".join(bullet.split()))
    sentence = re.split(r"(?<=[.;])\s", text, maxsplit=1)[0].rstrip(".;")
    return sentence if len(sentence) <= LINE else sentence[: LINE - 3].rstrip() + "..."


def sections(markdown: str) -> list[tuple[str, str | None, list[str]]]:
    """(version or 'Unreleased', date, bullets) in file order."""
    found: list[tuple[str, str | None, list[str]]] = []
    bullets: list[str] = []
    for line in markdown.splitlines():
        heading = re.match(r"^## \[([^]]+)\](?:\s*-\s*(\d{4}-\d{2}-\d{2}))?", line)
        if heading:
            bullets = []
            found.append((heading.group(1), heading.group(2), bullets))
        elif found and line.startswith("- "):
            bullets.append(line[2:])
        elif found and bullets and line.startswith("  ") and line.strip():
            bullets[-1] += " " + line.strip()
    return found


def main() -> int:
    markdown, version = Path(sys.argv[1]).read_text(), sys.argv[2]
    release = sys.argv[3] if len(sys.argv) > 3 else "1"
    build_date = datetime.fromtimestamp(int(os.environ.get("SOURCE_DATE_EPOCH", "0")), UTC)
    found = sections(markdown)
    has_own = any(name == version for name, _, _ in found)
    entries = []
    for name, date, bullets in found:
        if name.lower() == "unreleased":
            if has_own:
                continue
            name, when = version, build_date
        else:
            when = datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=UTC) if date else build_date
        notes = [first_sentence(b) for b in bullets] or ["No user-visible change."]
        entries.append(
            {
                "semver": f"{name}-{release}",
                "date": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "packager": PACKAGER,
                "deb": {"urgency": "medium", "distributions": ["stable"]},
                "changes": [{"commit": "", "note": note} for note in notes],
            }
        )
    if not any(entry["semver"] == f"{version}-{release}" for entry in entries):
        print(f"changelog: no section for {version} and no [Unreleased] section in {sys.argv[1]}", file=sys.stderr)
        return 1
    json.dump(entries, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
