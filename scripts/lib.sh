# shellcheck shell=sh
# Shared by install.sh and uninstall.sh (sourced, not run): where relay lives on a host, and
# steps that check before they change. Expects `destdir` and `dry_run` to be set.
: "${destdir?}" "${dry_run:?}"

# shellcheck disable=SC2034 # used by the scripts that source this file
UNIT=/etc/systemd/system/relay.service
# shellcheck disable=SC2034
CONFIG_DIR=/etc/relay
# shellcheck disable=SC2034
STATE_DIR=/var/lib/relay

# Changes made (or, in a dry run, that would be made).
changes=0

say() {
    printf '%s: %s\n' "$(basename "$0" .sh)" "$*"
}

die() {
    say "error: $*" >&2
    exit 1
}

# Runs a command that changes something, after printing it; a dry run only prints it.
run() {
    changes=$((changes + 1))
    if [ "$dry_run" = 1 ]; then
        say "would run: $*"
    else
        say "$*"
        "$@"
    fi
}

# The uid of user $1 (in DESTDIR's user database under a DESTDIR), empty if there is none.
user_id() {
    if [ -n "$destdir" ]; then
        [ -r "$destdir/etc/passwd" ] || return 0
        awk -F: -v name="$1" '$1 == name { print $3 }' "$destdir/etc/passwd"
    else
        getent passwd "$1" | cut -d: -f3
    fi
}

# The gid of group $1, like user_id.
group_id() {
    if [ -n "$destdir" ]; then
        [ -r "$destdir/etc/group" ] || return 0
        awk -F: -v name="$1" '$1 == name { print $3 }' "$destdir/etc/group"
    else
        getent group "$1" | cut -d: -f3
    fi
}

# Gives path $1 mode $2 (octal, as stat prints it), owner $3 and group $4 where it differs.
ensure_attr() {
    current=$(stat -c '%a %u %g' "$1")
    [ "$current" = "$2 $3 $4" ] && return 0
    [ "${current#* }" = "$3 $4" ] || run chown "$3:$4" "$1"
    [ "${current%% *}" = "$2" ] || run chmod "$2" "$1"
}

# Directory $1 with mode $2, owner $3, group $4.
ensure_dir() {
    if [ -d "$1" ]; then
        ensure_attr "$@"
    else
        run install -d -m "$2" -o "$3" -g "$4" "$1"
    fi
}

# File $2 with the contents of $1, mode $3, owner $4, group $5.
ensure_file() {
    if [ -f "$2" ] && cmp -s "$1" "$2"; then
        ensure_attr "$2" "$3" "$4" "$5"
    else
        run install -m "$3" -o "$4" -g "$5" "$1" "$2"
    fi
}

# Whether this host runs systemd (and systemctl can talk to it).
systemd_running() {
    [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1
}
