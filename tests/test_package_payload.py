"""The built .deb and .rpm, checked as a distribution maintainer would before installing them anywhere:

* every ELF file needs no glibc symbol newer than GLIBC_2.34 (RHEL 9, Amazon Linux 2023) nor newer than the
  package's own libc6 Depends, and every NEEDED library is shipped or in the base set every target has;
* the payload: the bundled runtime under /usr/lib/p0-ssh-agent, one entry point, no third-party test suite,
  no console scripts of the dependencies, every .py byte-compiled;
* the metadata: no Python dependency, the changelogs, the docs, the SBOM naming what is bundled;
* the bundled OpenSSL finds no CA of its own, and the agent's lookup finds the distribution's bundle;
* lintian shows no error and rpmlint no error, with only the overrides in packaging/.

Marked `system` (run by `make test` and `make system-test`) because building the packages needs root; the
packages are built once (packaging/build.sh, which reuses its cached runtime) unless dist/ holds ones newer
than every source, the same rule as tests/system/run.sh.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from p0_ssh_agent._version import __version__

ROOT = Path(__file__).resolve().parent.parent
DIST = ROOT / "dist"
DEB = DIST / f"p0-ssh-agent_{__version__}_amd64.deb"
RPM = DIST / f"p0-ssh-agent-{__version__}.x86_64.rpm"
PREFIX = "usr/lib/p0-ssh-agent/python"
# The oldest glibc of the targets (docs/install.md): RHEL 9 and Amazon Linux 2023.
GLIBC_CEILING = (2, 34)
# What every target has installed; anything else must be in the package (docs/install.md, "The runtime").
BASE_LIBRARIES = {
    "libc.so.6",
    "libm.so.6",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
    "libutil.so.1",
    "ld-linux-x86-64.so.2",
    "libz.so.1",
    "libgcc_s.so.1",
}
SOURCES = ["agent", "packaging", "systemd", "debian", "docs", "nfpm.yaml", "pyproject.toml", "constraints.txt"]
SOURCES += ["CHANGELOG.md", "README.md"]

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the runtime is built in a chroot"),
]


def _newest_source_mtime() -> float:
    newest = 0.0
    for name in SOURCES:
        path = ROOT / name
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for file in files:
            if "__pycache__" not in file.parts and file.suffix != ".pyc":
                newest = max(newest, file.stat().st_mtime)
    return newest


@pytest.fixture(scope="session")
def packages() -> tuple[Path, Path]:
    current = DEB.exists() and RPM.exists() and min(DEB.stat().st_mtime, RPM.stat().st_mtime) > _newest_source_mtime()
    if not current:
        subprocess.run(["/bin/bash", "packaging/build.sh"], cwd=ROOT, check=True, timeout=3600)
    return DEB, RPM


@dataclass(frozen=True)
class Payload:
    root: Path

    def files(self) -> Iterator[Path]:
        return (p for p in self.root.rglob("*") if p.is_file() and not p.is_symlink())

    def elves(self) -> list[Path]:
        found = []
        for path in self.files():
            with path.open("rb") as handle:
                if handle.read(4) == b"\x7fELF":
                    found.append(path)
        return found


@pytest.fixture(scope="session")
def deb_payload(packages: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Payload:
    root = tmp_path_factory.mktemp("deb")
    subprocess.run(["/usr/bin/dpkg-deb", "-x", str(packages[0]), str(root)], check=True)
    return Payload(root)


@pytest.fixture(scope="session")
def rpm_payload(packages: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Payload:
    root = tmp_path_factory.mktemp("rpm")
    cpio = subprocess.run(["/usr/bin/rpm2cpio", str(packages[1])], check=True, capture_output=True).stdout
    subprocess.run(["/usr/bin/cpio", "-idm", "--quiet"], input=cpio, cwd=root, check=True)
    return Payload(root)


def _readelf(*args: str) -> str:
    return subprocess.run(["/usr/bin/readelf", "-W", *args], capture_output=True, text=True, check=True).stdout


def _glibc_versions(elf: Path) -> set[tuple[int, ...]]:
    found = re.findall(r"Name: GLIBC_([0-9.]+)", _readelf("--version-info", str(elf)))
    return {tuple(int(n) for n in version.split(".")) for version in found}


def _needed(elf: Path) -> set[str]:
    return set(re.findall(r"\(NEEDED\)\s+Shared library: \[([^]]+)\]", _readelf("--dynamic", str(elf))))


def _deb_field(deb: Path, name: str) -> str:
    return subprocess.run(
        ["/usr/bin/dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=True
    ).stdout.strip()


def _libc_floor(packages: tuple[Path, Path]) -> tuple[int, ...]:
    depends = _deb_field(packages[0], "Depends")
    match = re.search(r"libc6 \(>= ([0-9.]+)\)", depends)
    assert match, f"no libc6 (>= ...) in Depends: {depends}"
    return tuple(int(n) for n in match.group(1).split("."))


@pytest.mark.parametrize("kind", ["deb", "rpm"])
def test_no_elf_file_needs_glibc_newer_than_the_ceiling_or_the_depends(
    kind: str, request: pytest.FixtureRequest, packages: tuple[Path, Path]
) -> None:
    payload: Payload = request.getfixturevalue(f"{kind}_payload")
    elves = payload.elves()
    assert len(elves) > 20, "the bundled runtime's interpreter and extension modules should be in the payload"
    floor = _libc_floor(packages)
    highest: dict[str, tuple[int, ...]] = {}
    for elf in elves:
        versions = _glibc_versions(elf)
        if versions:
            highest[str(elf.relative_to(payload.root))] = max(versions)
    too_new = {name: v for name, v in highest.items() if v > GLIBC_CEILING or v > floor}
    assert not too_new, f"needs a newer glibc than {floor} (Depends) / {GLIBC_CEILING} (RHEL 9): {too_new}"
    print(f"{kind}: {len(elves)} ELF files, highest GLIBC_{'.'.join(map(str, max(highest.values())))}")


@pytest.mark.parametrize("kind", ["deb", "rpm"])
def test_every_needed_library_is_shipped_or_in_the_base_set(kind: str, request: pytest.FixtureRequest) -> None:
    payload: Payload = request.getfixturevalue(f"{kind}_payload")
    shipped = {p.name for p in payload.root.rglob("*.so*")}
    outside = {}
    for elf in payload.elves():
        missing = _needed(elf) - BASE_LIBRARIES - shipped
        if missing:
            outside[str(elf.relative_to(payload.root))] = sorted(missing)
    assert not outside, f"NEEDED neither in the package nor in the base set: {outside}"
    # The libraries whose sonames differ between distributions are the package's own copies.
    for library in ("libssl.so.3", "libcrypto.so.3", "libffi.so.7"):
        assert (payload.root / PREFIX / "lib" / library).is_file(), library


def test_shared_objects_are_stripped(deb_payload: Payload) -> None:
    unstripped = [
        str(elf.relative_to(deb_payload.root))
        for elf in deb_payload.elves()
        if ".symtab" in _readelf("--section-headers", str(elf))
    ]
    assert not unstripped, f"not stripped: {unstripped}"


def test_payload_holds_no_third_party_tests_or_stray_entry_points(deb_payload: Payload) -> None:
    root = deb_payload.root
    assert sorted(p.name for p in (root / "usr/bin").iterdir()) == ["p0-ssh-agent"]
    assert sorted(p.name for p in (root / PREFIX / "bin").iterdir()) == ["python3", "python3.13"]
    site = next((root / PREFIX / "lib").glob("python3.*/site-packages"))
    assert not (site / "bin").exists(), "console scripts of the dependencies (pyrsa-*, cffi) are shipped"
    test_dirs = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir() and p.name in {"tests", "_tests"}]
    assert not test_dirs, f"test suites shipped: {test_dirs[:10]}"
    stdlib = site.parent
    for unwanted in ("test", "idlelib", "tkinter", "ensurepip", "pip", "setuptools"):
        assert not (stdlib / unwanted).exists() and not (site / unwanted).exists(), unwanted
    assert not list(root.rglob("*.a")), "static libraries shipped"
    assert not (root / PREFIX / "include").exists()


def test_every_python_file_has_an_unchecked_hash_pyc(deb_payload: Payload) -> None:
    lib = deb_payload.root / PREFIX / "lib"
    missing = []
    for source in lib.rglob("*.py"):
        tag = f"{source.stem}.cpython-313.pyc"
        pyc = source.parent / "__pycache__" / tag
        if not pyc.is_file():
            missing.append(str(source.relative_to(lib)))
            continue
        # Flags word of PEP 552: 0b01 = hash-based, 0b10 = check_source; unchecked-hash is exactly 1.
        assert pyc.read_bytes()[4:8] == b"\x01\x00\x00\x00", f"{pyc} is not an unchecked-hash pyc"
    assert not missing, f"{len(missing)} .py without .pyc, e.g. {missing[:5]}"


def test_launcher_runs_the_bundled_interpreter_isolated(deb_payload: Payload) -> None:
    launcher = deb_payload.root / "usr/bin/p0-ssh-agent"
    assert launcher.read_text().splitlines()[0] == f"#!/{PREFIX}/bin/python3.13 -IB"
    # The relocatable runtime runs from the extracted tree; a PYTHONPATH with a fake agent must not win.
    fake = deb_payload.root.parent / "fake"
    (fake / "p0_ssh_agent").mkdir(parents=True, exist_ok=True)
    (fake / "p0_ssh_agent" / "__init__.py").write_text("raise SystemExit('host PYTHONPATH leaked in')\n")
    python = deb_payload.root / PREFIX / "bin/python3.13"
    result = subprocess.run(
        [str(python), "-IB", str(launcher), "version"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(fake), "PYTHONHOME": "/nonexistent"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert __version__ in result.stdout


def test_bundled_openssl_has_no_trust_store_and_the_agent_finds_the_distributions(deb_payload: Payload) -> None:
    python = deb_payload.root / PREFIX / "bin/python3.13"
    probe = (
        "import json, ssl\n"
        "from p0_ssh_agent.runtime.trust import ca_bundle, tls_context\n"
        "paths = ssl.get_default_verify_paths()\n"
        "print(json.dumps({'openssl': ssl.OPENSSL_VERSION, 'default_cafile': paths.openssl_cafile,\n"
        "    'bundle': ca_bundle(None), 'cas': tls_context(None).cert_store_stats()['x509_ca']}))\n"
    )
    result = subprocess.run(
        [str(python), "-I", "-c", probe], capture_output=True, text=True, env={"PATH": "/usr/bin"}, check=False
    )
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts["openssl"].startswith("OpenSSL 3."), facts
    # Compiled-in defaults point into the runtime, where there is nothing: hence runtime/trust.py.
    assert facts["default_cafile"].startswith("/usr/lib/p0-ssh-agent/python/ssl/"), facts
    assert facts["bundle"] == "/etc/ssl/certs/ca-certificates.crt", facts
    assert facts["cas"] > 50, facts


def test_deb_metadata_depends_on_no_python(packages: tuple[Path, Path]) -> None:
    fields = {name: _deb_field(packages[0], name) for name in ("Depends", "Architecture", "Version")}
    assert "python" not in fields["Depends"], fields
    assert fields["Depends"].startswith("libc6 (>= 2.31)"), fields
    assert {"sudo", "passwd"} <= {d.strip().split(" ")[0] for d in fields["Depends"].split(",")}
    assert (fields["Architecture"], fields["Version"]) == ("amd64", f"{__version__}-1")


def test_rpm_metadata_requires_no_python_and_has_a_changelog(packages: tuple[Path, Path]) -> None:
    def query(*args: str) -> str:
        command = ["/usr/bin/rpm", "-qp", *args, str(packages[1])]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout

    requires = query("--requires")
    assert "python" not in requires, requires
    assert "glibc >= 2.31" in requires and "shadow-utils" in requires, requires
    assert __version__ in query("--changelog")
    docs = query("--docfiles").split()
    assert "/usr/share/doc/p0-ssh-agent/install.md" in docs and "/usr/share/doc/p0-ssh-agent/sbom.cdx.json" in docs
    assert "/usr/lib/systemd/system/p0-ssh-agent.service" in query("--list")


def test_docs_changelog_and_unit_are_where_maintainers_expect(deb_payload: Payload) -> None:
    doc = deb_payload.root / "usr/share/doc/p0-ssh-agent"
    for name in sorted(p.name for p in (ROOT / "docs").glob("*.md")):
        assert (doc / name).is_file(), name
    changelog = gzip.decompress((doc / "changelog.Debian.gz").read_bytes()).decode()
    assert changelog.startswith(f"p0-ssh-agent ({__version__}-1)"), changelog[:200]
    assert (deb_payload.root / "usr/lib/systemd/system/p0-ssh-agent.service").is_file()
    assert not (deb_payload.root / "lib").exists(), "/lib/systemd/system is an aliased location on merged /usr"


def test_deb_and_rpm_ship_the_same_files(deb_payload: Payload, rpm_payload: Payload) -> None:
    def listing(payload: Payload) -> set[str]:
        return {str(p.relative_to(payload.root)) for p in payload.root.rglob("*") if not p.is_dir()}

    deb_only = {"usr/share/doc/p0-ssh-agent/changelog.Debian.gz", "usr/share/lintian/overrides/p0-ssh-agent"}
    assert listing(deb_payload) - deb_only == listing(rpm_payload)


def test_sbom_names_the_runtime_and_every_bundled_distribution(deb_payload: Payload) -> None:
    bom = json.loads((deb_payload.root / "usr/share/doc/p0-ssh-agent/sbom.cdx.json").read_text())
    listed = {c["name"].lower(): c["version"] for c in bom["components"]}
    site = next((deb_payload.root / PREFIX / "lib").glob("python3.*/site-packages"))
    for info in site.glob("*.dist-info"):
        name, version = info.name.removesuffix(".dist-info").rsplit("-", 1)
        if name == "p0_ssh_agent":
            continue
        normalized = {k.replace("-", "_").replace(".", "_"): v for k, v in listed.items()}
        assert normalized.get(name.lower().replace(".", "_")) == version, f"{name} {version} not in the SBOM"
    assert listed["cpython"].startswith("3.13.") and listed["openssl"].startswith("3.")
    assert {"libffi", "xz-utils (liblzma)", "bzip2 (libbz2)"} <= set(listed)


@pytest.mark.skipif(shutil.which("lintian") is None, reason="lintian is missing: packaging/install-build-deps.sh")
def test_lintian_shows_no_error_and_every_override_is_used(packages: tuple[Path, Path]) -> None:
    result = subprocess.run(
        # --display-info: unused-override and mismatched-override are info tags. (Not --show-overrides: lintian
        # would count the overridden errors towards --fail-on.)
        ["/usr/bin/lintian", "--fail-on", "error", "--display-info", "--tag-display-limit", "0", str(packages[0])],
        capture_output=True,
        text=True,
        check=False,
    )
    print(result.stdout)
    lines = result.stdout.splitlines()
    errors = [line for line in lines if line.startswith("E: ")]
    assert result.returncode == 0 and not errors, "\n".join(errors) or result.stderr
    stale = [line for line in lines if "unused-override" in line or "mismatched-override" in line]
    assert not stale, "stale lintian overrides:\n" + "\n".join(stale)


@pytest.mark.skipif(shutil.which("rpmlint") is None, reason="rpmlint is missing: packaging/install-build-deps.sh")
def test_rpmlint_shows_no_error_outside_the_overrides(packages: tuple[Path, Path]) -> None:
    result = subprocess.run(
        ["/usr/bin/rpmlint", "-r", str(ROOT / "packaging/p0-ssh-agent.rpmlintrc"), str(packages[1])],
        capture_output=True,
        text=True,
        check=False,
    )
    print(result.stdout)
    errors = [line for line in result.stdout.splitlines() if re.search(r": E: ", line)]
    assert not errors, "\n".join(errors)
    assert re.search(r"\b0 errors\b", result.stdout), result.stdout[-500:]
