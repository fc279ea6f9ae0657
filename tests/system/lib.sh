# Helpers shared by the system-test scripts (sourced, not run): result counting and small waiting loops.
# shellcheck shell=bash

passed=0
failed=0
failures=()

say() { printf '%s\n' "$*"; }

ok() {
    passed=$((passed + 1))
    say "PASS $1"
}

bad() {
    failed=$((failed + 1))
    failures+=("$1")
    say "FAIL $1${2:+: $2}"
}

# check NAME COMMAND...: PASS when COMMAND exits 0; on failure, its output is shown indented.
check() {
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then
        ok "$name"
    else
        bad "$name" "exit $?"
        [ -n "$out" ] && printf '%s\n' "$out" | sed 's/^/    /' | tail -n 20
    fi
}

# expect_eq NAME EXPECTED ACTUAL
expect_eq() {
    if [ "$2" = "$3" ]; then ok "$1"; else bad "$1" "expected '$2', got '$3'"; fi
}

# expect_contains NAME NEEDLE HAYSTACK
expect_contains() {
    case "$3" in
        *"$2"*) ok "$1" ;;
        *) bad "$1" "'$2' not found in: $(printf '%s' "$3" | tail -c 400)" ;;
    esac
}

# wait_until SECONDS COMMAND...: retry COMMAND every 0.25 s until it succeeds or the time is up.
wait_until() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.25
    done
}

summary() {
    say ""
    if [ $failed -gt 0 ]; then
        say "failed checks:"
        printf '  %s\n' "${failures[@]}"
    fi
    say "$passed passed, $failed failed"
}
