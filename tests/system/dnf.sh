# The .rpm from the signed dnf repository, installed with `dnf --installroot` into a scratch root on this host
# (sourced by run.sh after lib.sh; issue 12). No RPM distribution root filesystem is reachable here, so the
# distribution is a stub: one package that Provides whatever the .rpm Requires, installed first. dnf then does
# what it does on a RHEL host: reads the .repo file as shipped, checks repomd.xml's signature (repo_gpgcheck) and
# each package's (gpgcheck) against the key imported into the root's rpmdb, resolves and installs. Scriptlets are
# off (tsflags=noscripts): the root has no /bin/sh or systemd to run them with; tests/test_maintainer_scripts.py
# runs them on every argument.
#
# Runs in run.sh's private mount namespace, where /srv is a tmpfs and the repository is bound at the path the
# .repo file names (/srv/p0-ssh-agent/repo), so the file is used exactly as `make repo` wrote it.
# shellcheck shell=bash

# dnf_in ROOT ARGS...: dnf against ROOT only, with its repositories from ROOT/etc/yum.repos.d and nothing cached
# outside it. --releasever: the stub root has no release package for dnf to read one from.
dnf_in() {
    local dnfroot=$1
    shift
    dnf -q -y --installroot="$dnfroot" --releasever=9 --setopt=reposdir="$dnfroot/etc/yum.repos.d" \
        --setopt=cachedir="$dnfroot/var/cache/dnf" --setopt=tsflags=noscripts --setopt=install_weak_deps=False \
        --setopt=skip_if_unavailable=False --disableplugin='*' "$@"
}

# stub_rpm RPM OUT_DIR: builds OUT_DIR/p0-test-distribution-stub.rpm providing every requirement of RPM.
stub_rpm() {
    local rpm=$1 out=$2 nfpm=$root/build/tools/bin/nfpm req name
    mkdir -p "$out/files"
    {
        printf 'name: p0-test-distribution-stub\narch: noarch\nplatform: linux\nversion: 1.0.0\n'
        printf 'description: stands in for the distribution packages p0-ssh-agent requires (test only)\n'
        printf 'maintainer: test <test@example.invalid>\nprovides:\n'
        while IFS= read -r req; do
            name=${req%% *}
            case "$name" in
                rpmlib\(*) ;;
                /*) ;;
                # A high version satisfies any ">= X" the real package states.
                *) printf '  - "%s = 999"\n' "$name" ;;
            esac
        done < <(rpm -qpR "$rpm" 2>/dev/null)
        # File requirements (an interpreter, say) are met by owning the path.
        printf 'contents:\n  - src: %s/files/empty\n    dst: /usr/share/p0-test-stub/empty\n' "$out"
        while IFS= read -r req; do
            case "$req" in /*) printf '  - src: %s/files/empty\n    dst: %s\n' "$out" "${req%% *}" ;; esac
        done < <(rpm -qpR "$rpm" 2>/dev/null)
    } >"$out/stub.yaml"
    : >"$out/files/empty"
    "$nfpm" package -f "$out/stub.yaml" -p rpm -t "$out/p0-test-distribution-stub.rpm" >/dev/null
}

check_dnf_repo() {
    local repo=$1 version=$2 work dnfroot out rc
    say "--- dnf --installroot from the signed repository"
    command -v dnf >/dev/null || { bad "dnf: installed on the host" "run packaging/install-build-deps.sh"; return; }
    local rpm
    rpm=$(ls "$repo"/rpm/p0-ssh-agent-"$version"*.rpm 2>/dev/null | head -1)
    expect_contains "dnf repo: the .rpm is signed with the repository key" "RSA/SHA512 Signature, key ID" \
        "$(rpm -Kv "$rpm" 2>&1)"
    local repo_file
    repo_file=$(cat "$repo/p0-ssh-agent.repo")
    expect_contains "dnf repo: .repo has gpgcheck=1" $'\ngpgcheck=1' "$repo_file"
    expect_contains "dnf repo: .repo has repo_gpgcheck=1" $'\nrepo_gpgcheck=1' "$repo_file"
    check "dnf repo: repomd.xml.asc verifies with the exported key" \
        sh -c 'g=$(mktemp -d) && gpg --homedir "$g" -q --batch --import "$1/p0-ssh-agent.asc" 2>/dev/null && gpg --homedir "$g" -q --batch --verify "$1/rpm/repodata/repomd.xml.asc" "$1/rpm/repodata/repomd.xml" 2>/dev/null; r=$?; gpgconf --homedir "$g" --kill gpg-agent; rm -rf "$g"; exit $r' _ "$repo"

    work=$(mktemp -d /tmp/p0-dnf.XXXXXX)
    dnfroot=$work/root
    mkdir -p "$dnfroot/etc/yum.repos.d"
    if ! stub_rpm "$rpm" "$work/stub" 2>"$work/stub.err"; then
        bad "dnf: stub distribution package built with nfpm" "$(tail -n 3 "$work/stub.err")"
        rm -rf "$work"
        return
    fi
    rpm --root "$dnfroot" --initdb
    check "dnf: the stub distribution installed (provides: $(rpm -qp --provides "$work/stub/p0-test-distribution-stub.rpm" 2>/dev/null | grep -v '^p0-test' | cut -d' ' -f1 | tr '\n' ' '))" \
        rpm --root "$dnfroot" -i "$work/stub/p0-test-distribution-stub.rpm"
    cp "$repo/p0-ssh-agent.repo" "$dnfroot/etc/yum.repos.d/"
    check "dnf: rpm --import of the repository key into the root's rpmdb" rpm --root "$dnfroot" --import "$repo/p0-ssh-agent.asc"
    rc=0
    out=$(dnf_in "$dnfroot" install p0-ssh-agent 2>&1) || rc=$?
    expect_eq "dnf --installroot install p0-ssh-agent (gpgcheck and repo_gpgcheck on): exit 0" 0 "$rc"
    [ "$rc" -eq 0 ] || printf '%s\n' "$out" | tail -n 10 | sed 's/^/    /'
    expect_eq "dnf: installed version" "p0-ssh-agent-$version-1.x86_64" \
        "$(rpm --root "$dnfroot" -q p0-ssh-agent 2>&1)"
    expect_contains "dnf: the root's rpmdb key verifies the package's signature" "digests signatures OK" \
        "$(rpm --root "$dnfroot" -K "$rpm" 2>&1)"
    check "dnf: installed files verify (rpm -V)" rpm --root "$dnfroot" -V p0-ssh-agent

    # The same repository with repomd.xml changed after signing: dnf must refuse it (repo_gpgcheck really on).
    local tampered=$work/tampered
    cp -a "$repo" "$tampered"
    printf '<!-- changed -->\n' >>"$tampered/rpm/repodata/repomd.xml"
    mkdir -p "$work/root2/etc/yum.repos.d"
    sed "s|^baseurl=.*|baseurl=file://$tampered/rpm|" "$repo/p0-ssh-agent.repo" >"$work/root2/etc/yum.repos.d/p0-ssh-agent.repo"
    rpm --root "$work/root2" --initdb
    rpm --root "$work/root2" -i "$work/stub/p0-test-distribution-stub.rpm" >/dev/null 2>&1
    rpm --root "$work/root2" --import "$repo/p0-ssh-agent.asc"
    rc=0
    out=$(dnf_in "$work/root2" install p0-ssh-agent 2>&1) || rc=$?
    [ -n "${P0_DEBUG_DNF:-}" ] && printf "%s\n" "$out" >&2
    if [ "$rc" -ne 0 ] && grep -q 'repomd.xml GPG signature verification error' <<<"$out" \
        && ! rpm --root "$work/root2" -q p0-ssh-agent >/dev/null 2>&1; then
        ok "dnf: a repomd.xml changed after signing is refused (repomd.xml GPG signature verification error)"
    else
        bad "dnf: a repomd.xml changed after signing is refused" "exit $rc: $(tail -n 3 <<<"$out" | tr '\n' ' ')"
    fi
    rm -rf "$work"
}

# check_dnf_upgrade REPO OLD NEW: with both versions in the repository, OLD installed by name, then `dnf upgrade`
# takes NEW, signature checks on (the payload side of an rpm upgrade; the scriptlets' order is unit-tested).
check_dnf_upgrade() {
    local repo=$1 old=$2 new=$3 work rpm rc=0 out
    work=$(mktemp -d /tmp/p0-dnf.XXXXXX)
    rpm=$(ls "$repo"/rpm/p0-ssh-agent-"$old"*.rpm 2>/dev/null | head -1)
    mkdir -p "$work/root/etc/yum.repos.d"
    stub_rpm "$rpm" "$work/stub" 2>/dev/null
    rpm --root "$work/root" --initdb
    rpm --root "$work/root" -i "$work/stub/p0-test-distribution-stub.rpm" >/dev/null 2>&1
    cp "$repo/p0-ssh-agent.repo" "$work/root/etc/yum.repos.d/"
    rpm --root "$work/root" --import "$repo/p0-ssh-agent.asc"
    out=$(dnf_in "$work/root" install "p0-ssh-agent-$old" 2>&1 && dnf_in "$work/root" upgrade p0-ssh-agent 2>&1) || rc=$?
    expect_eq "dnf upgrade from $old to $new from the signed repository" "0 p0-ssh-agent-$new-1.x86_64" \
        "$rc $(rpm --root "$work/root" -q p0-ssh-agent 2>&1)"
    [ "$rc" -eq 0 ] || printf '%s\n' "$out" | tail -n 5 | sed 's/^/    /'
    rm -rf "$work"
}
