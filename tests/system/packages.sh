# Structural checks of the built .deb and .rpm, on the host (sourced by run.sh after lib.sh).
# The .deb is also installed and run in the booted container; the .rpm can only be checked structurally here
# (no RPM-based rootfs is reachable), plus a payload install with `rpm --root`.
# shellcheck shell=bash
# shellcheck disable=SC2016  # single-quoted $ is expanded later by the inner shell, on purpose

# listing_has NAME LISTING REGEX: one line of an `ls -l`-style listing matches REGEX. (Here-strings, not pipes:
# with pipefail, `printf | grep -q` fails when grep stops reading early.)
listing_has() {
    if grep -qE -- "$3" <<<"$2"; then ok "$1"; else bad "$1" "no line matches /$3/"; fi
}

listing_lacks() {
    local hits
    hits=$(grep -E -- "$3" <<<"$2")
    if [ -n "$hits" ]; then bad "$1" "unexpected: $(head -n 3 <<<"$hits" | tr '\n' ' ')"; else ok "$1"; fi
}

check_deb() {
    local deb=$1 version=$2 src_root=$3 work
    say "--- .deb structure: $(basename "$deb")"
    expect_eq "deb: Package/Version/Architecture" "p0-ssh-agent $version-1 amd64" \
        "$(dpkg-deb -f "$deb" Package Version Architecture | awk -F': ' '{printf "%s%s", sep, $2; sep=" "}')"
    expect_eq "deb: Depends (no Python: the runtime is bundled)" "libc6 (>= 2.31), zlib1g, sudo, passwd" "$(dpkg-deb -f "$deb" Depends)"
    local listing
    listing=$(dpkg-deb -c "$deb")
    listing_has "deb: /etc/p0-ssh-agent is a 0750 root directory" "$listing" '^drwxr-x--- root/root .* \./etc/p0-ssh-agent/$'
    listing_has "deb: /etc/p0-ssh-agent/keys is a 0700 root directory" "$listing" '^drwx------ root/root .* \./etc/p0-ssh-agent/keys/$'
    listing_lacks "deb: no config.yaml or key shipped" "$listing" '\./etc/p0-ssh-agent/.+\.(yaml|json)$'
    listing_has "deb: unit in /usr/lib/systemd/system, 0644" "$listing" '^-rw-r--r-- root/root .* \./usr/lib/systemd/system/p0-ssh-agent\.service$'
    listing_has "deb: /etc/default/p0-ssh-agent 0644" "$listing" '^-rw-r--r-- root/root .* \./etc/default/p0-ssh-agent$'
    listing_has "deb: /usr/bin/p0-ssh-agent launcher 0755" "$listing" '^-rwxr-xr-x root/root .* \./usr/bin/p0-ssh-agent$'
    listing_has "deb: bundled interpreter 0755" "$listing" '^-rwxr-xr-x root/root .* \./usr/lib/p0-ssh-agent/python/bin/python3\.13$'
    listing_has "deb: man page" "$listing" '^-rw-r--r-- root/root .* \./usr/share/man/man8/p0-ssh-agent\.8\.gz$'
    listing_has "deb: copyright" "$listing" ' \./usr/share/doc/p0-ssh-agent/copyright$'
    listing_has "deb: changelog" "$listing" ' \./usr/share/doc/p0-ssh-agent/CHANGELOG\.md$'
    listing_has "deb: example config" "$listing" ' \./usr/share/doc/p0-ssh-agent/config\.example\.yaml$'
    listing_lacks "deb: no pip, setuptools or dev tools in the runtime" "$listing" \
        'site-packages/(pip|setuptools|_distutils_hack|pytest|_pytest|mypy|ruff|hypothesis)(/|-)'
    listing_lacks "deb: nothing group- or world-writable" "$listing" '^[-d]....w|^[-d].......w'
    expect_eq "deb: conffiles" \
        "/etc/default/p0-ssh-agent /etc/p0-ssh-agent/agent-access.cedar /etc/p0-ssh-agent/policy.cedar" \
        "$(dpkg-deb -I "$deb" conffiles 2>/dev/null | sort | tr '\n' ' ' | sed 's/ $//')"
    listing_has "deb: the local policy, 0644 root" "$listing" '^-rw-r--r-- root/root .* \./etc/p0-ssh-agent/policy\.cedar$'
    listing_has "deb: starter policies in the docs" "$listing" ' \./usr/share/doc/p0-ssh-agent/policies/no-sudo\.cedar$'

    work=$(mktemp -d)
    dpkg-deb -x "$deb" "$work/root"
    dpkg-deb -e "$deb" "$work/control"
    local leaks
    leaks=$(grep -rlaF -e "$src_root" "$work/root" | head -3 || true)
    expect_eq "deb: no build path ($src_root) inside the package" "" "$leaks"
    local py pyc_missing=0
    while IFS= read -r py; do
        local stem=${py##*/}
        stem=${stem%.py}
        compgen -G "$(dirname "$py")/__pycache__/$stem.cpython-313.pyc" >/dev/null || pyc_missing=$((pyc_missing + 1))
    done < <(find "$work/root/usr/lib/p0-ssh-agent/python/lib" -name '*.py')
    expect_eq "deb: every .py has its .pyc (read-only /usr at run time)" 0 "$pyc_missing"
    # pyc header word 2: bit 0 = hash-based, bit 1 = check the source; unchecked-hash is 1.
    expect_eq "deb: pyc are unchecked-hash" "01000000" \
        "$(od -An -tx1 -j4 -N4 "$(find "$work/root/usr/lib/p0-ssh-agent" -name '*.cpython-313.pyc' | head -1)" | tr -d ' \n')"
    # gzip header: byte 3 = flags (FNAME would be 08), bytes 4-7 = mtime; gzip -n leaves all zero.
    expect_eq "deb: man page gzip header has no name and no time" "0000000000" \
        "$(od -An -tx1 -j3 -N5 "$work/root/usr/share/man/man8/p0-ssh-agent.8.gz" | tr -d ' \n')"
    local script
    for script in postinst prerm postrm; do
        check "deb: $script is an executable POSIX sh script" \
            sh -c '[ -x "$1" ] && head -1 "$1" | grep -qx "#!/bin/sh" && sh -n "$1"' _ "$work/control/$script"
    done
    rm -rf "$work"
}

check_rpm() {
    local rpm=$1 version=$2 src_root=$3
    say "--- .rpm structure: $(basename "$rpm")"
    check "rpm: digests OK" rpm -K --nosignature "$rpm"
    expect_eq "rpm: name, version, release, arch" "p0-ssh-agent $version 1 x86_64" \
        "$(rpm -qp --qf '%{NAME} %{VERSION} %{RELEASE} %{ARCH}' "$rpm" 2>/dev/null)"
    local requires
    requires=$(rpm -qpR "$rpm" 2>/dev/null | grep -v '^rpmlib(' | sort | tr '\n' ' ')
    expect_eq "rpm: requires (no Python)" "glibc >= 2.31 libz.so.1()(64bit) shadow-utils sudo " "$requires"
    local listing flags scripts
    listing=$(rpm -qplv "$rpm" 2>/dev/null)
    listing_has "rpm: /etc/p0-ssh-agent 0750" "$listing" '^drwxr-x--- .* root +root .* /etc/p0-ssh-agent$'
    listing_has "rpm: /etc/p0-ssh-agent/keys 0700" "$listing" '^drwx------ .* root +root .* /etc/p0-ssh-agent/keys$'
    listing_has "rpm: unit in /usr/lib/systemd/system, 0644" "$listing" '^-rw-r--r-- .* /usr/lib/systemd/system/p0-ssh-agent\.service$'
    listing_has "rpm: /usr/bin/p0-ssh-agent launcher 0755" "$listing" '^-rwxr-xr-x .* /usr/bin/p0-ssh-agent$'
    listing_has "rpm: man page" "$listing" ' /usr/share/man/man8/p0-ssh-agent\.8\.gz$'
    listing_lacks "rpm: does not own /opt, /etc, /usr/bin or /lib" "$(rpm -qpl "$rpm" 2>/dev/null)" '^(/opt|/etc|/usr|/usr/bin|/usr/lib|/lib)$'
    flags=$(rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$rpm" 2>/dev/null)
    listing_has "rpm: config.yaml is a ghost (owned, not shipped)" "$flags" '^g /etc/p0-ssh-agent/config\.yaml$'
    listing_has "rpm: /etc/default/p0-ssh-agent is %config(noreplace)" "$flags" '^cn /etc/default/p0-ssh-agent$'
    listing_has "rpm: /etc/p0-ssh-agent/policy.cedar is %config(noreplace)" "$flags" '^cn /etc/p0-ssh-agent/policy\.cedar$'
    scripts=$(rpm -qp --scripts "$rpm" 2>/dev/null)
    expect_contains "rpm: %post present" 'postinstall scriptlet (using /bin/sh)' "$scripts"
    expect_contains "rpm: %preun erases only on \$1 = 0" '[ "$1" -eq 0 ]' "$(printf '%s' "$scripts" | sed -n '/^preuninstall/,/^postuninstall/p')"
    expect_contains "rpm: %postun restarts only on upgrade" '[ "$1" -ge 1 ]' "$(printf '%s' "$scripts" | sed -n '/^postuninstall/,$p')"
    expect_contains "rpm: %posttrans removes only what a 0.1.0 venv left in /opt" \
        '[ ! -e "$old_runtime/venv/bin/p0-ssh-agent" ]' "$(printf '%s' "$scripts" | sed -n '/^posttrans/,$p')"

    # A payload install into an empty root: files, modes and symlinks as rpm lays them down, then the bundled
    # interpreter run from there (its library run paths are $ORIGIN-relative, so it works from any prefix).
    local rroot
    rroot=$(mktemp -d)
    if rpm --root "$rroot" --initdb && rpm --root "$rroot" -i --nodeps --noscripts "$rpm" >/dev/null 2>&1; then
        ok "rpm: --root install (--nodeps --noscripts)"
        check "rpm: installed files verify (rpm -V --nodeps)" rpm --root "$rroot" -V --nodeps p0-ssh-agent
        expect_eq "rpm: installed /etc/p0-ssh-agent mode" "750 700" \
            "$(stat -c %a "$rroot/etc/p0-ssh-agent" "$rroot/etc/p0-ssh-agent/keys" | tr '\n' ' ' | sed 's/ $//')"
        check "rpm: installed runtime imports the agent and its dependencies" \
            "$rroot/usr/lib/p0-ssh-agent/python/bin/python3.13" -I -c 'import p0_ssh_agent.cli, trio, trio_websocket, jose, cryptography, ruamel.yaml, structlog'
        # What `register` and `keygen` would write, to see what an erase does with them (docs/install.md).
        echo 'orgId: "x"' >"$rroot/etc/p0-ssh-agent/config.yaml"
        echo '{}' >"$rroot/etc/p0-ssh-agent/keys/jwk.private.json"
        rpm --root "$rroot" -e --nodeps --noscripts p0-ssh-agent >/dev/null 2>&1 || true
        expect_eq "rpm: erase removes the application, the unit and the ghost config.yaml, keeps the key" \
            "app=no unit=no config=no key=yes" \
            "$(for p in usr/lib/p0-ssh-agent usr/lib/systemd/system/p0-ssh-agent.service etc/p0-ssh-agent/config.yaml \
                etc/p0-ssh-agent/keys/jwk.private.json; do
                [ -e "$rroot/$p" ] && r=yes || r=no
                case $p in usr/lib/p0-ssh-agent) n=app ;; *.service) n=unit ;; *.yaml) n=config ;; *) n=key ;; esac
                printf '%s=%s ' "$n" "$r"
            done | sed 's/ $//')"
    else
        bad "rpm: --root install (--nodeps --noscripts)"
    fi
    rm -rf "$rroot"
}
