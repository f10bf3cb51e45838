#!/bin/sh
# Removes what scripts/install.sh added: stops and disables the unit, removes it and the
# binary. Keeps the config ($CONFIG_DIR), the state (bans, usage, the default secret) and the
# system user that owns it, unless --purge.
#
# Usage: scripts/uninstall.sh [--prefix DIR] [--destdir DIR] [--dry-run] [--purge]
#   --prefix DIR   where the binary was installed, DIR/bin (default /usr/local)
#   --destdir DIR  uninstall from under DIR instead of / (as install.sh --destdir)
#   --dry-run      print what would change, change nothing
#   --purge        also remove the config, the state and the system user `relay`
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
prefix=/usr/local
destdir=
dry_run=0
purge=0
user=relay

usage() {
    sed -n '2,11s/^# \{0,1\}//p' "$0"
    exit "${1:-0}"
}

while [ $# -gt 0 ]; do
    case $1 in
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --destdir) destdir=${2:?--destdir needs a directory}; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --purge) purge=1; shift ;;
    -h | --help) usage 0 ;;
    *) echo "uninstall.sh: unknown argument: $1" >&2; usage 2 >&2 ;;
    esac
done

# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"

[ "$dry_run" = 1 ] || [ "$(id -u)" = 0 ] || die "run as root (or with --dry-run)"

bin_path=$destdir$prefix/bin/relay-ctl
unit_path=$destdir$UNIT
config_dir=$destdir$CONFIG_DIR
state_dir=$destdir$STATE_DIR

if [ -z "$destdir" ] && systemd_running; then
    systemctl is-active --quiet relay 2>/dev/null && run systemctl stop relay
    systemctl is-enabled --quiet relay 2>/dev/null && run systemctl disable relay
fi
if [ -e "$unit_path" ]; then
    run rm -f "$unit_path"
    [ -n "$destdir" ] || ! systemd_running || run systemctl daemon-reload
fi
[ ! -e "$bin_path" ] || run rm -f "$bin_path"

if [ "$purge" = 1 ]; then
    [ ! -e "$config_dir" ] || run rm -rf "$config_dir"
    [ ! -e "$state_dir" ] || run rm -rf "$state_dir"
    if [ -n "$(user_id "$user")" ]; then
        if [ -n "$destdir" ]; then
            run userdel --prefix "$destdir" "$user"
        else
            run userdel "$user"
        fi
    fi
    # userdel leaves a group that another user still has as its primary group.
    if [ -n "$(group_id "$user")" ]; then
        if [ -n "$destdir" ]; then
            run groupdel --prefix "$destdir" "$user"
        else
            run groupdel "$user"
        fi
    fi
else
    for kept in "$config_dir" "$state_dir"; do
        [ ! -e "$kept" ] || say "kept $kept (--purge removes it)"
    done
    [ -z "$(user_id "$user")" ] || say "kept the system user $user (--purge removes it)"
fi

if [ "$changes" = 0 ]; then
    say "nothing to change"
elif [ "$dry_run" = 1 ]; then
    say "$changes change(s) to make"
else
    say "$changes change(s) made"
fi
