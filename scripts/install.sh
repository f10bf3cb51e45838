#!/bin/sh
# Installs a built relay-ctl onto this host: the binary, the systemd unit from contrib/, the
# system user `relay`, the config and state directories with their owners and modes, and a
# config skeleton with a generated secret when there is no config yet. Checks the config
# before enabling the unit. Each step checks first, so a second run changes nothing.
#
# Usage: scripts/install.sh [--binary PATH] [--prefix DIR] [--destdir DIR] [--dry-run]
#   --binary PATH  the relay-ctl to install (default: target/release/relay-ctl of this tree)
#   --prefix DIR   where the binary goes, DIR/bin (default /usr/local)
#   --destdir DIR  install under DIR instead of / (packaging, tests): the user is added to
#                  DIR/etc/passwd and DIR/etc/group, and systemd is left alone
#   --dry-run      print what would change, change nothing
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
binary=$repo/target/release/relay-ctl
prefix=/usr/local
destdir=
dry_run=0
user=relay

usage() {
    sed -n '2,13s/^# \{0,1\}//p' "$0"
    exit "${1:-0}"
}

while [ $# -gt 0 ]; do
    case $1 in
    --binary) binary=${2:?--binary needs a path}; shift 2 ;;
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --destdir) destdir=${2:?--destdir needs a directory}; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage 0 ;;
    *) echo "install.sh: unknown argument: $1" >&2; usage 2 >&2 ;;
    esac
done

# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"

[ -x "$binary" ] || die "no relay-ctl at $binary: build it (cargo build --release -p relay-ctl) or pass --binary"
[ "$dry_run" = 1 ] || [ "$(id -u)" = 0 ] || die "run as root (or with --dry-run)"

bin_path=$destdir$prefix/bin/relay-ctl
unit_path=$destdir$UNIT
config_dir=$destdir$CONFIG_DIR
config=$config_dir/relay.toml
state_dir=$destdir$STATE_DIR

# The system user and group, in DESTDIR's user database when installing under DESTDIR.
if [ -z "$(user_id "$user")" ]; then
    if [ -n "$destdir" ]; then
        ensure_dir "$destdir/etc" 755 0 0
        for db in passwd:644 group:644 shadow:640 gshadow:640; do
            [ -e "$destdir/etc/${db%:*}" ] || run install -m "${db#*:}" /dev/null "$destdir/etc/${db%:*}"
        done
        run useradd --prefix "$destdir" --system --user-group --no-create-home \
            --home-dir "$STATE_DIR" --shell /usr/sbin/nologin "$user"
    else
        run useradd --system --user-group --no-create-home \
            --home-dir "$STATE_DIR" --shell /usr/sbin/nologin "$user"
    fi
fi
uid=$(user_id "$user")
gid=$(group_id "$user")
# In a dry run the user may not exist yet: show its name.
uid=${uid:-$user}
gid=${gid:-$user}

ensure_dir "$(dirname "$bin_path")" 755 0 0
ensure_file "$binary" "$bin_path" 755 0 0

# The unit names the binary by its installed path.
unit_src=$(mktemp)
trap 'rm -f "$unit_src"' EXIT
sed "s|/usr/local/bin/relay-ctl|$prefix/bin/relay-ctl|" "$repo/contrib/systemd/relay.service" >"$unit_src"
ensure_dir "$(dirname "$unit_path")" 755 0 0
before_unit=$changes
ensure_file "$unit_src" "$unit_path" 644 0 0
unit_changed=$((changes - before_unit))

# Config readable by the service's group only (it holds the users' secrets); state private.
ensure_dir "$config_dir" 750 0 "$gid"
if [ ! -e "$config" ]; then
    skeleton=$(mktemp)
    trap 'rm -f "$unit_src" "$skeleton"' EXIT
    secret=$("$binary" secret new)
    cat >"$skeleton" <<EOF
# relay configuration written by scripts/install.sh. Every section with its defaults:
# contrib/relay.example.toml in the source tree; the operator guide explains them.
# Check a change with: relay-ctl config check $CONFIG_DIR/relay.toml
# Apply it without dropping connections: systemctl reload relay

[server]
listen = ["0.0.0.0:443", "[::]:443"]
modes = ["tls"]
# Host clients use in links (relay-ctl link); default: guessed from the listen addresses.
# public_host = "proxy.example.org"

# One user per person or group: relay-ctl secret new makes a secret.
[[users]]
name = "default"
secret = "$secret"

[tls]
# The site ee links name: a large HTTPS site reachable from the clients' country.
domain = "www.cloudflare.com"
EOF
    ensure_file "$skeleton" "$config" 640 0 "$gid"
fi
ensure_dir "$state_dir" 700 "$uid" "$gid"

# Enable only a config that passes.
if [ -e "$config" ]; then
    "$binary" config check "$config" >/dev/null || die "$config does not pass relay-ctl config check; fix it and run install.sh again"
fi
if [ -z "$destdir" ] && systemd_running; then
    [ "$unit_changed" = 0 ] || run systemctl daemon-reload
    systemctl is-enabled --quiet relay 2>/dev/null || run systemctl enable relay
fi

if [ "$changes" = 0 ]; then
    say "nothing to change"
elif [ "$dry_run" = 1 ]; then
    say "$changes change(s) to make"
else
    say "$changes change(s) made"
fi
if [ -z "$destdir" ] && [ "$dry_run" = 0 ]; then
    say "next: edit $CONFIG_DIR/relay.toml, then: systemctl restart relay; relay-ctl link --config $CONFIG_DIR/relay.toml"
fi
