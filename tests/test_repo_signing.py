"""packaging/repo.sh (`make repo`) with a release key passed as P0_REPO_GPG_HOME and P0_REPO_KEY_ID, on two tiny
packages (dpkg-deb and rpmbuild): every signature checked with the verifier a client uses (gpgv for the apt
Release files and repomd.xml, rpmkeys for the .rpm), against the key files the repository publishes. The test key
path (build/repo-gnupg) and real clients (apt on Debian 12 and 13, dnf) are the system test's (tests/system/).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REPO_SH = ROOT / "packaging" / "repo.sh"
TOOLS = ("gpg", "gpgv", "gpgconf", "apt-ftparchive", "createrepo_c", "rpmsign", "rpmbuild", "rpmkeys", "dpkg-deb")
URL = "https://packages.example.invalid/p0"

pytestmark = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in TOOLS),
    reason="needs gpg, apt-utils, createrepo-c and rpm (packaging/install-build-deps.sh)",
)


def tool(name: str) -> str:
    """The absolute path of a program (argv lists with absolute paths, docs/security.md)."""
    found = shutil.which(name)
    assert found is not None, name
    return found


def run(*argv: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    command = [tool(str(argv[0])), *(str(a) for a in argv[1:])]
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env, cwd=cwd, timeout=120)
    assert done.returncode == 0, f"{argv[0]} exited {done.returncode}: {done.stderr[-2000:]}"
    return done.stdout + done.stderr


def tiny_deb(work: Path) -> Path:
    tree = work / "deb"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        "Package: p0-ssh-agent\nVersion: 9.9.9-1\nArchitecture: amd64\nMaintainer: t <t@example.invalid>\n"
        "Description: test\n test\n"
    )
    (tree / "usr" / "share" / "p0-test").mkdir(parents=True)
    (tree / "usr" / "share" / "p0-test" / "file").write_text("x\n")
    run("dpkg-deb", "--root-owner-group", "-b", tree, work / "p0-ssh-agent_9.9.9_amd64.deb")
    return work / "p0-ssh-agent_9.9.9_amd64.deb"


def tiny_rpm(work: Path) -> Path:
    top = work / "rpmbuild"
    spec = work / "p0.spec"
    spec.write_text(
        "Name: p0-ssh-agent\nVersion: 9.9.9\nRelease: 1\nSummary: test\nLicense: Apache-2.0\nBuildArch: x86_64\n"
        "%description\ntest\n%install\nmkdir -p %{buildroot}/usr/share/p0-test\n"
        "echo x > %{buildroot}/usr/share/p0-test/file\n%files\n/usr/share/p0-test/file\n"
    )
    run("rpmbuild", "--quiet", "--define", f"_topdir {top}", "--define", "__os_install_post %{nil}", "-bb", spec)
    (built,) = (top / "RPMS" / "x86_64").glob("*.rpm")
    return built


def release_key(home: Path) -> str:
    """A GnuPG home with one RSA key, as an operator's release-signing home would hold (here without passphrase)."""
    home.mkdir(mode=0o700)
    gpg = ("gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback", "--passphrase", "")
    run(*gpg, "--quick-gen-key", "P0 release test <release@example.invalid>", "rsa3072", "sign", "never")
    listing = run("gpg", "--homedir", home, "--batch", "--with-colons", "--list-secret-keys")
    return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    tmp_path = tmp_path_factory.mktemp("published")
    home = tmp_path / "gnupg"
    fingerprint = release_key(home)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "P0_REPO_GPG_HOME": str(home),
        "P0_REPO_KEY_ID": fingerprint,
        "P0_REPO_URL": URL + "/",
    }
    out = tmp_path / "repo"
    try:
        run("bash", REPO_SH, out, tiny_deb(tmp_path), tiny_rpm(tmp_path), env=env)
    finally:
        subprocess.run([tool("gpgconf"), "--homedir", str(home), "--kill", "gpg-agent"], check=False)
    return out, fingerprint


def test_apt_release_files_are_signed_by_the_release_key(published: tuple[Path, str]) -> None:
    repo, fingerprint = published
    keyring = repo / "p0-ssh-agent-archive-keyring.gpg"
    assert not keyring.read_bytes().startswith(b"-----BEGIN"), "Signed-By keyrings are binary here"
    dists = repo / "deb" / "dists" / "stable"
    release = (dists / "Release").read_text()
    for field in ("Suite: stable", "Codename: stable", "Architectures: amd64", "Components: main", "SHA256:"):
        assert field in release
    assert "main/binary-amd64/Packages.gz" in release
    assert fingerprint[-16:] in run("gpgv", "--keyring", keyring, dists / "InRelease").replace(" ", "")
    run("gpgv", "--keyring", keyring, dists / "Release.gpg", dists / "Release")
    packages = (dists / "main" / "binary-amd64" / "Packages").read_text()
    assert "Filename: pool/main/p/p0-ssh-agent/p0-ssh-agent_9.9.9_amd64.deb" in packages
    sources = (repo / "p0-ssh-agent.sources").read_text()
    assert f"URIs: {URL}/deb\n" in sources and "Suites: stable\n" in sources
    assert "Signed-By: /usr/share/keyrings/p0-ssh-agent-archive-keyring.gpg\n" in sources


def test_a_changed_release_file_no_longer_verifies(published: tuple[Path, str], tmp_path: Path) -> None:
    repo = tmp_path / "copy"
    shutil.copytree(published[0], repo)
    dists = repo / "deb" / "dists" / "stable"
    release = dists / "Release"
    release.write_text(release.read_text().replace("Label: p0-ssh-agent", "Label: changed"))
    done = subprocess.run(
        [
            tool("gpgv"),
            "--keyring",
            str(repo / "p0-ssh-agent-archive-keyring.gpg"),
            str(dists / "Release.gpg"),
            str(release),
        ],
        capture_output=True,
        check=False,
    )
    assert done.returncode != 0 and b"BAD signature" in done.stderr


def test_rpm_and_repomd_are_signed_by_the_release_key(published: tuple[Path, str], tmp_path: Path) -> None:
    repo, fingerprint = published
    (rpm,) = (repo / "rpm").glob("*.rpm")
    db = tmp_path / "rpmdb"
    db.mkdir()
    run("rpmkeys", "--dbpath", db, "--import", repo / "p0-ssh-agent.asc")
    checked = run("rpmkeys", "--dbpath", db, "-Kv", rpm)
    assert f"key ID {fingerprint[-8:].lower()}: OK" in checked and "RSA/SHA512" in checked
    repodata = repo / "rpm" / "repodata"
    run(
        "gpgv",
        "--keyring",
        repo / "p0-ssh-agent-archive-keyring.gpg",
        repodata / "repomd.xml.asc",
        repodata / "repomd.xml",
    )
    assert "p0-ssh-agent-9.9.9-1.x86_64.rpm" in run("sh", "-c", f"zcat {repodata}/*-primary.xml.gz")
    dnf_repo = (repo / "p0-ssh-agent.repo").read_text()
    for line in (f"baseurl={URL}/rpm", "gpgcheck=1", "repo_gpgcheck=1", f"gpgkey={URL}/p0-ssh-agent.asc"):
        assert f"\n{line}\n" in dnf_repo


def test_a_release_home_without_a_key_id_is_refused(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "P0_REPO_GPG_HOME": str(tmp_path)}
    done = subprocess.run(
        [tool("bash"), str(REPO_SH), str(tmp_path / "repo"), str(tiny_deb(tmp_path))],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert done.returncode != 0 and "P0_REPO_KEY_ID" in done.stderr
    assert not (tmp_path / "repo").exists()
