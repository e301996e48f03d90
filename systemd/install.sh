#!/usr/bin/env bash
# Install, upgrade or remove the L4E edge agent on a systemd gateway, from the source tree this script is in.
#
#   sudo systemd/install.sh                        install, or upgrade in place (safe to re-run)
#   sudo systemd/install.sh --uninstall            remove the program and the units; keep /etc and /var/lib data
#   sudo systemd/install.sh --uninstall --purge    also remove the data, the configuration and the user
#   systemd/install.sh --root /tmp/stage --no-venv stage into a folder: no users, no chown, no systemctl
#
# Options:
#   --root DIR          install under DIR instead of / (DESTDIR=DIR does the same)
#   --python PY         interpreter the venv is made from (default: python3; must be >= 3.11)
#   --pip-args "ARGS"   extra `pip install` arguments, e.g. "--no-index --find-links /media/usb/wheels"
#                       on a gateway without internet, or "--no-deps" for a quick staged check
#   --no-venv           leave /opt/l4e-agent/venv alone (units, configuration and folders only)
#   --no-restart        on upgrade, do not restart running instances
#   --systemd-version N the target's systemd version (default: `systemctl --version`; for staging)
#   --uninstall         remove; with --purge also /etc/l4e-agent, /var/lib/l4e-agent, /var/lib/l4e-lookout
#
# What it installs:
#   /opt/l4e-agent/venv            a venv with this project pip-installed (console script bin/l4e-agent)
#   /etc/systemd/system/           l4e-agent@.service, l4e-lookout.service, and on systemd >= 254
#                                  l4e-agent@.service.d/10-restart-backoff.conf (a growing restart delay)
#   /etc/l4e-agent/example.toml    from config/example.toml, only if absent (never overwritten)
#   /etc/l4e-agent/replay/history.csv  the example's replay source, only if absent
#   /var/lib/l4e-agent/            state root; each instance's folder is made by systemd (StateDirectory=)
#   user and group l4e-agent       system account, no login shell, member of dialout (serial ports)
# A staged venv (--root) has DIR in its script paths: it is for inspection and tests, not for copying.
set -euo pipefail
shopt -s nullglob

readonly PREFIX=/opt/l4e-agent
readonly VENV=$PREFIX/venv
readonly CONF_DIR=/etc/l4e-agent
readonly STATE_DIR=/var/lib/l4e-agent
readonly LOOKOUT_STATE_DIR=/var/lib/l4e-lookout
readonly UNIT_DIR=/etc/systemd/system
readonly SERVICE_USER=l4e-agent
readonly UNITS=(l4e-agent@.service l4e-lookout.service)
readonly BACKOFF_DROPIN=l4e-agent@.service.d/10-restart-backoff.conf
readonly BACKOFF_MIN_SYSTEMD=254  # RestartSteps= and RestartMaxDelaySec= are unknown before
SRC=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
readonly SRC

ROOT=${DESTDIR:-}
PYTHON=python3
PIP_ARGS=""
WITH_VENV=1
RESTART=1
ACTION=install
PURGE=0
SYSTEMD_VERSION=""
BUILD_DIR=""

say() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,26p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
cleanup() { if [[ -n $BUILD_DIR ]]; then rm -rf -- "$BUILD_DIR"; fi; }
trap cleanup EXIT

parse_args() {
    while (($#)); do
        case $1 in
            --root) ROOT=${2:?--root needs a folder}; shift 2 ;;
            --root=*) ROOT=${1#--root=}; shift ;;
            --python) PYTHON=${2:?--python needs an interpreter}; shift 2 ;;
            --pip-args) PIP_ARGS=${2?--pip-args needs a value}; shift 2 ;;
            --no-venv) WITH_VENV=0; shift ;;
            --no-restart) RESTART=0; shift ;;
            --systemd-version) SYSTEMD_VERSION=${2:?--systemd-version needs a number}; shift 2 ;;
            --uninstall) ACTION=uninstall; shift ;;
            --purge) PURGE=1; shift ;;
            -h | --help) usage; exit 0 ;;
            *) usage >&2; die "unknown argument: $1" ;;
        esac
    done
    if ((PURGE)) && [[ $ACTION != uninstall ]]; then die "--purge only goes with --uninstall"; fi
    if [[ -n $ROOT ]]; then
        ROOT=$(realpath -m -- "$ROOT")
        [[ $ROOT == / ]] && ROOT=""
    fi
    if [[ -z $ROOT && $EUID -ne 0 ]]; then die "run as root, or stage into a folder with --root DIR"; fi
}

staged() { [[ -n $ROOT ]]; }

# systemctl only on the live system with systemd as init (not in containers or chroots without it).
systemd_running() { ! staged && [[ -d /run/systemd/system ]]; }

ensure_user() {
    staged && return 0
    getent group dialout >/dev/null || groupadd --system dialout
    if getent passwd "$SERVICE_USER" >/dev/null; then
        usermod --append --groups dialout "$SERVICE_USER"
    else
        local nologin
        nologin=$(command -v nologin || echo /usr/sbin/nologin)
        useradd --system --user-group --groups dialout --home-dir "$STATE_DIR" --no-create-home \
            --shell "$nologin" --comment "L4E edge agent" "$SERVICE_USER"
        say "created system user $SERVICE_USER"
    fi
}

# make_dir PATH MODE OWNER:GROUP: create or fix a folder; ownership only on the live system.
make_dir() {
    install -d -m "$2" -- "$ROOT$1"
    staged || chown -- "$3" "$ROOT$1"
}

install_dirs() {
    make_dir "$PREFIX" 0755 root:root
    make_dir "$CONF_DIR" 0750 "root:$SERVICE_USER"
    make_dir "$STATE_DIR" 0750 "$SERVICE_USER:$SERVICE_USER"
    make_dir "$UNIT_DIR" 0755 root:root
}

install_example_config() {
    local example=$SRC/config/example.toml target=$ROOT$CONF_DIR/example.toml
    if [[ ! -f $example ]]; then
        say "no config/example.toml in $SRC; write $CONF_DIR/<asset>.toml yourself"
    elif [[ -e $target ]]; then
        say "keeping existing $CONF_DIR/example.toml"
    else
        install -m 0640 -- "$example" "$target"
        staged || chown -- "root:$SERVICE_USER" "$target"
        say "installed $CONF_DIR/example.toml"
    fi
    # the example's replay source reads replay/history.csv next to it: without it `check` fails on the example
    local history=$SRC/config/replay/history.csv history_target=$ROOT$CONF_DIR/replay/history.csv
    if [[ -f $history && ! -e $history_target ]]; then
        make_dir "$CONF_DIR/replay" 0750 "root:$SERVICE_USER"
        install -m 0640 -- "$history" "$history_target"
        staged || chown -- "root:$SERVICE_USER" "$history_target"
        say "installed $CONF_DIR/replay/history.csv (the example's replay source)"
    fi
}

install_units() {
    local unit
    for unit in "${UNITS[@]}"; do
        [[ -f $SRC/systemd/$unit ]] || die "missing $SRC/systemd/$unit"
        install -m 0644 -- "$SRC/systemd/$unit" "$ROOT$UNIT_DIR/$unit"
    done
    say "installed units into $UNIT_DIR"
    install_backoff_dropin
}

# systemd >= 254 lengthens the restart delay after each failed start (15 s ... 5 min, see the drop-in);
# older ones keep the unit's fixed RestartSec=, and must not see keys they do not know.
install_backoff_dropin() {
    local version=$SYSTEMD_VERSION target=$ROOT$UNIT_DIR/$BACKOFF_DROPIN
    if [[ -z $version ]]; then
        version=$(systemctl --version 2>/dev/null | awk 'NR == 1 { print $2 }') || version=""
    fi
    if [[ $version =~ ^[0-9]+$ ]] && ((version >= BACKOFF_MIN_SYSTEMD)); then
        install -d -m 0755 -- "$(dirname -- "$target")"
        install -m 0644 -- "$SRC/systemd/restart-backoff.conf" "$target"
        say "systemd $version: restart delay grows from 15 s to 5 min ($UNIT_DIR/$BACKOFF_DROPIN)"
    else
        rm -f -- "$target"
        say "systemd ${version:-unknown}: fixed restart delay (RestartSec=15)"
    fi
}

# Copy the project to a scratch folder first: building in place would write build/ and *.egg-info into
# the source tree, which may be read-only (a mounted USB stick) or a checkout we must not dirty.
stage_source() {
    BUILD_DIR=$(mktemp -d "${TMPDIR:-/tmp}/l4e-install.XXXXXX")
    tar -C "$SRC" --exclude='./.*' --exclude=./build --exclude='*.egg-info' --exclude=__pycache__ \
        --exclude=./tests --exclude=./var --exclude=./demo-out -cf - . | tar -C "$BUILD_DIR" -xf -
}

# Checked before anything is written, so a wrong --python leaves the system as it was.
check_venv_prerequisites() {
    [[ -f $SRC/pyproject.toml ]] || die "no pyproject.toml in $SRC: run the script from the source tree"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
        die "$PYTHON is missing or older than Python 3.11 (choose one with --python)"
}

install_venv() {
    local venv=$ROOT$VENV
    # A venv whose interpreter no longer starts (the OS upgraded Python under it) is rebuilt from scratch.
    if [[ -x $venv/bin/python ]] && ! "$venv/bin/python" -c '' 2>/dev/null; then
        say "rebuilding broken venv $VENV"
        "$PYTHON" -m venv --clear -- "$venv"
    elif [[ ! -x $venv/bin/python ]]; then
        "$PYTHON" -m venv -- "$venv"
        say "created venv $VENV"
    fi
    stage_source
    local -a extra
    read -r -a extra <<<"$PIP_ARGS"
    # pip always rebuilds and reinstalls a project given as a folder, so an upgrade with an unchanged
    # version number still gets the new code; dependencies are only touched when the pins require it.
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input "${extra[@]}" -- "$BUILD_DIR"
    [[ -x $venv/bin/l4e-agent ]] || die "pip did not create $VENV/bin/l4e-agent"
    say "installed $("$venv/bin/python" -m pip --disable-pip-version-check show l4e-agent |
        sed -n 's/^Version: /l4e-agent /p') into $VENV"
}

do_install() {
    local upgrade=0
    [[ -e $ROOT$VENV/bin/l4e-agent ]] && upgrade=1
    if ((WITH_VENV)); then check_venv_prerequisites; fi
    ensure_user
    install_dirs
    if ((WITH_VENV)); then install_venv; fi
    install_units
    install_example_config
    if systemd_running; then
        systemctl daemon-reload
        if ((upgrade && RESTART)); then
            # Only units that are running restart; stopped and disabled ones stay as they are.
            systemctl try-restart 'l4e-agent@*.service' l4e-lookout.service
            say "restarted running instances"
        fi
    fi
    say "done. Next: write $CONF_DIR/<asset>.toml, then: systemctl enable --now l4e-agent@<asset>"
}

do_uninstall() {
    local link unit
    if systemd_running; then
        for link in "$ROOT$UNIT_DIR"/*.wants/l4e-agent@*.service "$ROOT$UNIT_DIR"/*.wants/l4e-lookout.service; do
            systemctl disable --now -- "$(basename -- "$link")" || true
        done
        systemctl stop 'l4e-agent@*.service' l4e-lookout.service || true
    fi
    # Links systemctl did not know about (a staged root) would dangle once the units are gone.
    for link in "$ROOT$UNIT_DIR"/*.wants/l4e-agent@*.service "$ROOT$UNIT_DIR"/*.wants/l4e-lookout.service; do
        rm -f -- "$link"
    done
    for unit in "${UNITS[@]}"; do
        rm -f -- "$ROOT$UNIT_DIR/$unit"
    done
    rm -f -- "$ROOT$UNIT_DIR/$BACKOFF_DROPIN"
    rmdir -- "$ROOT$UNIT_DIR/l4e-agent@.service.d" 2>/dev/null || true  # kept when it holds the admin's drop-ins
    rm -rf -- "$ROOT$PREFIX"
    say "removed $PREFIX and the units"
    if ((PURGE)); then
        # Drop-ins from `systemctl edit` are the administrator's configuration: kept unless purging.
        rm -rf -- "$ROOT$UNIT_DIR/l4e-agent@.service.d" "$ROOT$UNIT_DIR/l4e-lookout.service.d"
        rm -rf -- "$ROOT$CONF_DIR" "$ROOT$STATE_DIR" "$ROOT$LOOKOUT_STATE_DIR"
        if ! staged && getent passwd "$SERVICE_USER" >/dev/null; then userdel -- "$SERVICE_USER"; fi
        say "purged $CONF_DIR, $STATE_DIR, $LOOKOUT_STATE_DIR"
    else
        say "kept $CONF_DIR and $STATE_DIR (add --purge to remove them)"
    fi
    if systemd_running; then systemctl daemon-reload; fi
}

main() {
    parse_args "$@"
    if staged; then say "staging into $ROOT"; fi
    if [[ $ACTION == uninstall ]]; then do_uninstall; else do_install; fi
}

main "$@"
