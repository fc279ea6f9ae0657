#!/bin/bash
# `make repo`: a signed apt repository and a signed dnf repository of the built packages (issue 12).
#
#   packaging/repo.sh OUT PACKAGE...      (make repo: OUT=dist/repo, PACKAGE = every dist/*.deb and dist/*.rpm)
#
# OUT is replaced as a whole (built in OUT.new, then renamed), so a client reading it never sees half a repository:
#
#   OUT/p0-ssh-agent-archive-keyring.gpg   the public key, binary (for Signed-By: and /usr/share/keyrings)
#   OUT/p0-ssh-agent.asc                   the same key, armored (for the .repo file's gpgkey= and rpm --import)
#   OUT/p0-ssh-agent.sources               deb822 apt source with Signed-By:
#   OUT/p0-ssh-agent.repo                  dnf/yum repository with gpgcheck=1 and repo_gpgcheck=1
#   OUT/deb/pool/main/p/p0-ssh-agent/*.deb
#   OUT/deb/dists/stable/{Release,InRelease,Release.gpg}, main/binary-ARCH/Packages{,.gz}
#   OUT/rpm/*.rpm (each signed with rpm --addsign), OUT/rpm/repodata/repomd.xml and repomd.xml.asc
#
# One suite, `stable`, serves every Debian and Ubuntu release: the package carries its own runtime, so the same
# .deb installs everywhere, and per-release suites would only be copies of one file to keep in step.
#
# The signing key:
#   - by default a test key made once for this checkout in build/repo-gnupg (RSA 3072, no passphrase, no expiry):
#     fine for the tests, never for a real repository, and marked so in its user id;
#   - the release key: P0_REPO_GPG_HOME=/path/to/gnupghome P0_REPO_KEY_ID=<full fingerprint> make repo. The
#     home may hold the secret key or talk to a gpg-agent/smartcard that does; nothing is copied out of it.
# Environment: P0_REPO_URL, the address clients reach OUT at (written into the .sources and .repo files; default
# file:///srv/p0-ssh-agent/repo, where the system test serves it); P0_REPO_NAME for the test key's user id.
#
# RSA, not Ed25519: apt's sqv (Debian 13), gpgv (Debian 12, Ubuntu) and rpm on RHEL 9, Amazon Linux 2023 and
# Fedora all verify RSA signatures; rpm's EdDSA support depends on the rpm version and crypto-policies, and one
# key must sign both formats. 3072 bits is gpg's default and outside every current deprecation schedule (sqv's
# policy retires rsa2048 in 2030); a release key may be 4096.
#
# Needs: gpg, apt-ftparchive (apt-utils), createrepo_c (createrepo-c), rpmsign (rpm); no network, no root.
set -euo pipefail
umask 022

root=$(cd "$(dirname "$0")/.." && pwd -P)
out=${1:?usage: repo.sh OUT PACKAGE...}
shift
[ $# -gt 0 ] || { echo "repo: no packages given (run make package first)" >&2; exit 1; }

log() { printf 'repo: %s\n' "$*"; }
die() { printf 'repo: %s\n' "$*" >&2; exit 1; }

for tool in gpg apt-ftparchive createrepo_c rpmsign; do
    command -v "$tool" >/dev/null || die "$tool is missing: bash packaging/install-build-deps.sh"
done

url=${P0_REPO_URL:-file:///srv/p0-ssh-agent/repo}
url=${url%/}
suite=stable
component=main
keyring_name=p0-ssh-agent-archive-keyring.gpg
keyring_path=/usr/share/keyrings/$keyring_name

# --- the key ----------------------------------------------------------------------------------------------------
if [ -n "${P0_REPO_GPG_HOME:-}" ]; then
    [ -n "${P0_REPO_KEY_ID:-}" ] || die "P0_REPO_GPG_HOME is set: set P0_REPO_KEY_ID to the key's fingerprint too"
    gnupghome=$P0_REPO_GPG_HOME
    key_id=$P0_REPO_KEY_ID
    ephemeral=0
else
    gnupghome=$root/build/repo-gnupg
    ephemeral=1
    if [ ! -s "$gnupghome/test-key-id" ]; then
        log "making a test signing key in $gnupghome (RSA 3072, for tests only)"
        rm -rf "$gnupghome"
        mkdir -p -m 0700 "$gnupghome"
        gpg --homedir "$gnupghome" --batch --quiet --pinentry-mode loopback --passphrase '' \
            --quick-gen-key "${P0_REPO_NAME:-p0-ssh-agent TEST repository key (not for release)} <p0-ssh-agent@example.invalid>" \
            rsa3072 sign never 2>/dev/null
        gpg --homedir "$gnupghome" --batch --with-colons --list-secret-keys | awk -F: '$1 == "fpr" { print $10; exit }' \
            >"$gnupghome/test-key-id"
    fi
    key_id=$(cat "$gnupghome/test-key-id")
fi
# Only a gpg-agent this script started is stopped at the end; a release key's agent is the operator's.
stop_agent() { [ "$ephemeral" -eq 1 ] && gpgconf --homedir "$gnupghome" --kill gpg-agent 2>/dev/null; true; }
trap stop_agent EXIT
# The test key has no passphrase; a release key's passphrase is the business of its gpg-agent (or its card).
no_passphrase=()
[ "$ephemeral" -eq 1 ] && no_passphrase=(--pinentry-mode loopback --passphrase '')
gpg_sign=(gpg --homedir "$gnupghome" --batch --yes --quiet "${no_passphrase[@]}" --local-user "$key_id" --digest-algo SHA512)
gpg --homedir "$gnupghome" --batch --list-secret-keys "$key_id" >/dev/null 2>&1 || die "no secret key $key_id in $gnupghome"

new=$out.new
rm -rf "$new"
mkdir -p "$new/deb/pool/$component/p/p0-ssh-agent" "$new/rpm"
gpg --homedir "$gnupghome" --batch --export "$key_id" >"$new/$keyring_name"
gpg --homedir "$gnupghome" --batch --armor --export "$key_id" >"$new/p0-ssh-agent.asc"

# --- apt ----------------------------------------------------------------------------------------------------------
debs=() rpms=()
for package in "$@"; do
    case "$package" in
        *.deb) debs+=("$package") ;;
        *.rpm) rpms+=("$package") ;;
        *) die "not a .deb or .rpm: $package" ;;
    esac
done
archs=()
for deb in "${debs[@]}"; do
    cp "$deb" "$new/deb/pool/$component/p/p0-ssh-agent/"
    arch=$(dpkg-deb -f "$deb" Architecture)
    [[ " ${archs[*]} " == *" $arch "* ]] || archs+=("$arch")
done
dists=$new/deb/dists/$suite
for arch in "${archs[@]}"; do
    mkdir -p "$dists/$component/binary-$arch"
    # Paths in Packages are relative to the repository root (deb/), as apt expects for a dists/ layout.
    (cd "$new/deb" && apt-ftparchive --arch "$arch" packages "pool/$component") >"$dists/$component/binary-$arch/Packages"
    gzip -9n <"$dists/$component/binary-$arch/Packages" >"$dists/$component/binary-$arch/Packages.gz"
done
if [ ${#archs[@]} -gt 0 ]; then
    # Suite and Codename both `stable`, so the Suites: line matches either and apt never warns about a conflict.
    apt-ftparchive \
        -o APT::FTPArchive::Release::Origin=P0 \
        -o APT::FTPArchive::Release::Label=p0-ssh-agent \
        -o APT::FTPArchive::Release::Suite=$suite \
        -o APT::FTPArchive::Release::Codename=$suite \
        -o "APT::FTPArchive::Release::Architectures=${archs[*]}" \
        -o APT::FTPArchive::Release::Components=$component \
        -o "APT::FTPArchive::Release::Description=p0-ssh-agent packages" \
        release "$dists" >"$dists/Release.tmp"
    mv "$dists/Release.tmp" "$dists/Release"
    "${gpg_sign[@]}" --clearsign -o "$dists/InRelease" "$dists/Release"
    "${gpg_sign[@]}" --detach-sign --armor -o "$dists/Release.gpg" "$dists/Release"
fi
cat >"$new/p0-ssh-agent.sources" <<EOF
# p0-ssh-agent apt repository. Install the key first:
#   install -m 0644 $keyring_name $keyring_path
# then copy this file to /etc/apt/sources.list.d/ and run apt-get update.
Types: deb
URIs: $url/deb
Suites: $suite
Components: $component
Signed-By: $keyring_path
EOF

# --- dnf ----------------------------------------------------------------------------------------------------------
# rpmsign points gpg's pinentry at the terminal on stdin, and warns when there is none; there is no pinentry to
# show in a pipeline anyway.
[ -t 0 ] || export GPG_TTY=${GPG_TTY:-/dev/null}
for rpm in "${rpms[@]}"; do
    cp "$rpm" "$new/rpm/"
    # --addsign replaces any signature the file had; %_gpg_path points rpm's gpg at the same home, and %__gpg
    # at the gpg on PATH (Debian's rpm expects a gpg2 that gnupg no longer installs).
    rpmsign --addsign --define "_gpg_name $key_id" --define "_gpg_path $gnupghome" --define "__gpg $(command -v gpg)" \
        --define "_gpg_digest_algo sha512" --define "_gpg_sign_cmd_extra_args --batch" \
        "$new/rpm/$(basename "$rpm")" >/dev/null
done
if [ ${#rpms[@]} -gt 0 ]; then
    createrepo_c --quiet --no-database "$new/rpm" >/dev/null
    "${gpg_sign[@]}" --detach-sign --armor -o "$new/rpm/repodata/repomd.xml.asc" "$new/rpm/repodata/repomd.xml"
fi
cat >"$new/p0-ssh-agent.repo" <<EOF
# p0-ssh-agent dnf repository: copy to /etc/yum.repos.d/. gpgcheck checks each package's signature,
# repo_gpgcheck the signature of repodata/repomd.xml; both with the key at gpgkey=.
[p0-ssh-agent]
name=p0-ssh-agent
baseurl=$url/rpm
enabled=1
gpgcheck=1
repo_gpgcheck=1
gpgkey=$url/p0-ssh-agent.asc
EOF

# --- publish ------------------------------------------------------------------------------------------------------
rm -rf "$out.old"
[ -e "$out" ] && mv "$out" "$out.old"
mv "$new" "$out"
rm -rf "$out.old"
log "$out: ${#debs[@]} .deb (suite $suite, ${archs[*]:-no architecture}), ${#rpms[@]} .rpm, signed by $key_id"
