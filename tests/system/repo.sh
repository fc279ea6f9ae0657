# The signed repositories in the system test (sourced by run.sh after lib.sh; issue 12).
#
# packaging/repo.sh (what `make repo` runs) writes them into build/system/serve/repo. run.sh binds
# build/system/serve at /srv/p0-ssh-agent both in the container and, over a tmpfs /srv in its private mount
# namespace, on this host: the address P0_REPO_URL defaults to, so the .sources and .repo files are used
# exactly as written. A new publish replaces the repo directory inside the bound one, so the container sees it.
# shellcheck shell=bash

serve=$root/build/system/serve
repo_in_container=/srv/p0-ssh-agent/repo

# publish NAME PACKAGE...: the repository now holds exactly these packages, signed with the checkout's test key.
publish() {
    local name=$1 out
    shift
    mkdir -p "$serve"
    if out=$(P0_REPO_URL=file://$repo_in_container bash "$root/packaging/repo.sh" "$serve/repo" "$@" 2>&1); then
        ok "$name: $(tail -n 1 <<<"$out" | sed 's/^repo: //; s|/[^ ]*/serve/repo|repo|')"
    else
        bad "$name" "$(tail -n 5 <<<"$out" | tr '\n' ' ')"
    fi
}

# next_version VERSION: the same MAJOR.MINOR with PATCH + 1, the version of the test's upgrade.
next_version() {
    local major minor patch
    IFS=. read -r major minor patch <<<"$1"
    printf '%s.%s.%s\n' "$major" "$minor" "$((patch + 1))"
}

# build_next VERSION DIR: the packages of this tree under VERSION in DIR (packaging/build.sh's
# P0_PACKAGE_VERSION and P0_DIST_DIR), rebuilt only when DIR's .deb is older than a source.
build_next() {
    local version=$1 dir=$2
    if [ -f "$dir/p0-ssh-agent_${version}_amd64.deb" ] && [ -z "$(stale_sources "$dir/p0-ssh-agent_${version}_amd64.deb")" ] \
        && [ "${P0_SYSTEM_TEST_REBUILD:-auto}" != always ]; then
        say "--- reusing the $version packages in $dir"
        return 0
    fi
    say "--- building the same tree as version $version (the upgrade)"
    P0_PACKAGE_VERSION=$version P0_DIST_DIR=$dir bash packaging/build.sh 2>&1 | grep -v "^WARNING: Location '" | tail -n 3
}

# apt_update_clean NAME: apt-get update in the container; PASS when it exits 0 and prints no W:, E: or N: line
# (an unsigned or weakly signed repository, a key apt's policy rejects, a missing Signed-By: all warn).
# The same grep on the tampered repository below must find its error, so the pattern does see apt's messages.
apt_update_clean() {
    local out rc=0 noise
    out=$(C apt-get update 2>&1) || rc=$?
    # apt 2.6 (Debian 12) prefixes W:/E:/N:, apt 3.0 (Debian 13) writes Warning:/Error:/Notice:.
    noise=$(grep -E '^(W|E|N|Err):|[Ww]arning|[Nn]otice:|[Ee]rror:' <<<"$out")
    if [ "$rc" -eq 0 ] && [ -z "$noise" ] && grep -q "$repo_in_container/deb stable InRelease" <<<"$out"; then
        ok "$1"
    else
        bad "$1" "exit $rc: $(tr '\n' ' ' <<<"${noise:-$out}" | tail -c 400)"
    fi
}

# add_apt_source: the key and the deb822 source as docs/install.md tells an admin to install them.
add_apt_source() {
    check "keyring installed to /usr/share/keyrings (binary, 0644)" \
        C install -m 0644 "$repo_in_container/p0-ssh-agent-archive-keyring.gpg" /usr/share/keyrings/p0-ssh-agent-archive-keyring.gpg
    check "p0-ssh-agent.sources installed to /etc/apt/sources.list.d" \
        C install -m 0644 "$repo_in_container/p0-ssh-agent.sources" /etc/apt/sources.list.d/p0-ssh-agent.sources
    expect_contains "the source names its keyring (Signed-By:)" \
        "Signed-By: /usr/share/keyrings/p0-ssh-agent-archive-keyring.gpg" "$(C cat /etc/apt/sources.list.d/p0-ssh-agent.sources)"
}

# apt_refuses_tampered: a copy of the repository with one signed line of its Release changed must be refused
# (so the clean update above is clean because the signature verified, not because nothing was checked).
apt_refuses_tampered() {
    local out rc=0
    C sh -c "rm -rf /tmp/tampered && cp -a $repo_in_container/deb /tmp/tampered && sed -i 's/^Label: p0-ssh-agent\$/Label: changed/' /tmp/tampered/dists/stable/Release /tmp/tampered/dists/stable/InRelease"
    printf 'Types: deb\nURIs: file:/tmp/tampered\nSuites: stable\nComponents: main\nSigned-By: /usr/share/keyrings/p0-ssh-agent-archive-keyring.gpg\n' \
        | C_write /etc/apt/sources.list.d/p0-tampered.sources 0644
    out=$(C apt-get update 2>&1) || rc=$?
    C rm -f /etc/apt/sources.list.d/p0-tampered.sources
    C rm -rf /tmp/tampered
    local complaints
    complaints=$(grep -E '^(W|E|N|Err):|[Ww]arning|[Nn]otice:|[Ee]rror:' <<<"$out")
    if grep -q '/tmp/tampered' <<<"$complaints"; then
        ok "apt refuses the repository once its InRelease is changed after signing"
    else
        bad "apt refuses the repository once its InRelease is changed after signing" "exit $rc: $(tr '\n' ' ' <<<"$out" | tail -c 300)"
    fi
}
