#!/usr/bin/env bash
# Install or upgrade the edge-evolver daemon (`edge-evolver serve`) on an NVIDIA Jetson.
#
# Run it as root on the board, from a checkout of this repository:
#     sudo deploy/jetson/install.sh --broker mqtt://192.168.1.10:1883
# Re-running it upgrades the code and dependencies and keeps /etc/edge-evolver/config.toml.
# --dry-run prints every step instead of doing it (no root needed, nothing is changed).
# --root DIR installs into DIR instead of / (tests/test_deploy.py runs it in a throwaway root).
# deploy/README.md describes each step; systemd/README.md the unit.
set -euo pipefail
umask 022

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)

SERVICE_USER=edge-evolver
UNIT_NAME=edge-evolver.service
UNIT_DIR=/etc/systemd/system
CONFIG_DIR=/etc/edge-evolver
CONFIG_FILE=$CONFIG_DIR/config.toml
PASSWORD_FILE=$CONFIG_DIR/broker-password
STATE_DIR=/var/lib/edge-evolver
CACHE_DIR=/var/cache/edge-evolver
# On every user's PATH and in sudo's secure_path (Ubuntu): `sudo edge-evolver keys trust …` finds the command.
BIN_DIR=/usr/local/bin
CUDA_HOME_DEFAULT=/usr/local/cuda
# LoadCredential= exists from this systemd version on (JetPack 6 has 249; JetPack 4.6 237, JetPack 5 245).
CREDENTIALS_MIN_SYSTEMD=247

PREFIX=/opt/edge-evolver
PREFIX_GIVEN=0
ROOT=""
BROKER=""
DEVICE_ID=""
GROUP=""
PYTHON=python3
NO_SERVICE=0
DRY_RUN=0
FORCE=0
WARNINGS=()
ORIGINAL_ARGS="$*"

usage() {
    cat <<EOF
Usage: sudo $0 [options]

Installs the edge-evolver daemon on this Jetson: a system user '$SERVICE_USER', a virtualenv in
PREFIX/venv that sees JetPack's TensorRT, the dependencies for this board's python3, the edge_evolver
package, the command $BIN_DIR/edge-evolver (a link into the venv), $CONFIG_FILE (only if absent),
the systemd unit $UNIT_NAME (enabled and started). Re-running upgrades the code and keeps the config.

Options:
  --prefix DIR        install below DIR (default: $PREFIX)
  --broker URL        MQTT broker for a new config: mqtt://HOST[:PORT], or mqtts://HOST[:PORT] for TLS
                      (default: mqtt://localhost:1883)
  --device-id ID      this board's name for a new config (default: the hostname, resolved at run time)
  --group NAME        shared-subscription group for a new config: identical boards that share jobs
  --python PATH       the interpreter to build the venv from (default: python3, the one JetPack's
                      TensorRT bindings are built for)
  --no-service        do not install, enable or start the systemd unit
  --force             install on a machine that is not a Jetson (no /etc/nv_tegra_release), for testing
  --root DIR          install into DIR instead of / (tests): /etc, /var, /usr/local/bin and the default
                      prefix move below DIR, in the files written too; root is not needed
  --dry-run           print what would be done; change nothing (root not needed)
  -h, --help          show this help

--broker, --device-id and --group only fill in a config that does not exist yet; edit
$CONFIG_FILE to change an installed one.
EOF
}

log() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
warn() {
    printf 'WARNING: %s\n' "$*" >&2
    WARNINGS+=("$*")
}
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}
usage_error() {
    printf 'error: %s\n' "$*" >&2
    printf "Run '%s --help' for the options.\n" "$0" >&2
    exit 2
}

# Run a command, or print it under --dry-run.
run() {
    if ((DRY_RUN)); then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

# write_file MODE OWNER GROUP DEST: write standard input to DEST atomically with that mode and owner.
write_file() {
    local mode=$1 owner=$2 group=$3 dest=$4 tmp
    if ((DRY_RUN)); then
        printf '+ write %s (mode %s, %s:%s):\n' "$dest" "$mode" "$owner" "$group"
        sed 's/^/|   /'
        return
    fi
    tmp=$(mktemp "$dest.XXXXXX")
    cat >"$tmp"
    chown "$owner:$group" "$tmp"
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$dest"
}

# TOML basic string: the values are validated below, so only quotes and backslashes need escaping.
toml_string() {
    local value=${1//\\/\\\\}
    printf '"%s"' "${value//\"/\\\"}"
}

need_value() {
    [[ $# -ge 2 && -n $2 ]] || usage_error "$1 needs a value"
}

while [[ $# -gt 0 ]]; do
    case $1 in
    --prefix=* | --broker=* | --device-id=* | --group=* | --python=* | --root=*)
        opt=${1%%=*}
        value=${1#*=}
        shift
        set -- "$opt" "$value" "$@"
        continue
        ;;
    --prefix)
        need_value "$@"
        PREFIX=$2
        PREFIX_GIVEN=1
        shift 2
        ;;
    --root)
        need_value "$@"
        ROOT=$2
        shift 2
        ;;
    --broker)
        need_value "$@"
        BROKER=$2
        shift 2
        ;;
    --device-id)
        need_value "$@"
        DEVICE_ID=$2
        shift 2
        ;;
    --group)
        need_value "$@"
        GROUP=$2
        shift 2
        ;;
    --python)
        need_value "$@"
        PYTHON=$2
        shift 2
        ;;
    --no-service)
        NO_SERVICE=1
        shift
        ;;
    --force)
        FORCE=1
        shift
        ;;
    --dry-run)
        DRY_RUN=1
        shift
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        usage_error "unknown option '$1'"
        ;;
    esac
done

# ---------------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------------
ROOT=${ROOT%/}
if [[ -n $ROOT ]]; then
    [[ $ROOT =~ ^/[A-Za-z0-9._/-]+$ ]] || usage_error "--root must be an absolute path of letters, digits and . _ - /"
    # The files name the moved paths too (config, unit, command), so what was installed runs as it is.
    ((PREFIX_GIVEN)) || PREFIX=$ROOT$PREFIX
    UNIT_DIR=$ROOT$UNIT_DIR
    CONFIG_DIR=$ROOT$CONFIG_DIR
    CONFIG_FILE=$CONFIG_DIR/config.toml
    PASSWORD_FILE=$CONFIG_DIR/broker-password
    STATE_DIR=$ROOT$STATE_DIR
    CACHE_DIR=$ROOT$CACHE_DIR
    BIN_DIR=$ROOT$BIN_DIR
fi
PREFIX=${PREFIX%/}
[[ $PREFIX == /* ]] || usage_error "--prefix must be an absolute path, not '$PREFIX'"
[[ $PREFIX =~ ^/[A-Za-z0-9._/-]+$ ]] || usage_error "--prefix may only contain letters, digits and . _ - /"
if [[ -n $BROKER ]] && ! [[ $BROKER =~ ^mqtts?://([A-Za-z0-9._-]+@)?([A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?/?$ ]]; then
    usage_error "--broker must look like mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (no password in it), not '$BROKER'"
fi
for pair in "device-id:$DEVICE_ID" "group:$GROUP"; do
    name=${pair%%:*}
    value=${pair#*:}
    if [[ -n $value ]] && ! [[ $value =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ ]]; then
        usage_error "--$name must be 1-64 letters, digits, . _ - starting with a letter or digit (it becomes an MQTT topic level)"
    fi
done

VENV=$PREFIX/venv
WRAPPER=$VENV/bin/edge-evolver

((DRY_RUN)) && log "Dry run: nothing is changed; the commands are printed with a leading '+'."

[[ $(uname -s) == Linux ]] || die "edge-evolver's daemon runs on Linux only"
if ((!DRY_RUN)) && [[ -z $ROOT && $EUID -ne 0 ]]; then
    die "run as root: sudo $0 $ORIGINAL_ARGS"
fi
[[ -f $REPO_ROOT/edge_evolver/__main__.py ]] || die "no edge_evolver package in $REPO_ROOT; run this script from a checkout"
[[ -f $REPO_ROOT/systemd/$UNIT_NAME ]] || die "missing $REPO_ROOT/systemd/$UNIT_NAME"
[[ -f $SCRIPT_DIR/config.toml ]] || die "missing $SCRIPT_DIR/config.toml"

if [[ -r $ROOT/etc/nv_tegra_release ]]; then
    log "Jetson: $(head -n 1 "$ROOT/etc/nv_tegra_release")"
    if [[ -r $ROOT/proc/device-tree/model ]]; then
        note "board: $(tr -d '\0' <"$ROOT/proc/device-tree/model")"
    fi
elif ((FORCE)); then
    warn "no /etc/nv_tegra_release: this is not a Jetson (continuing because of --force); TensorRT and the Jetson power meters will be missing"
else
    die "no /etc/nv_tegra_release: this does not look like a Jetson. Use --force to install anyway (for testing)"
fi

command -v "$PYTHON" >/dev/null 2>&1 || die "'$PYTHON' not found (JetPack ships python3; or pass --python)"
PY_VERSION=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 6) else 1)'; then
    die "$PYTHON is Python $PY_VERSION; edge-evolver needs 3.6 or later"
fi
if [[ $PY_VERSION == 3.6 ]]; then
    REQUIREMENTS=$SCRIPT_DIR/requirements-py36.txt
else
    REQUIREMENTS=$SCRIPT_DIR/requirements.txt
fi
[[ -f $REQUIREMENTS ]] || die "missing $REQUIREMENTS"
log "Python $PY_VERSION ($(command -v "$PYTHON")): dependencies from ${REQUIREMENTS#"$REPO_ROOT"/}"
SITE_PACKAGES=$VENV/lib/python$PY_VERSION/site-packages

SYSTEMD_VERSION=$(systemctl --version 2>/dev/null | awk 'NR == 1 { print $2 }' || true)
[[ $SYSTEMD_VERSION =~ ^[0-9]+$ ]] || SYSTEMD_VERSION=0
if ((SYSTEMD_VERSION >= CREDENTIALS_MIN_SYSTEMD)); then
    # systemd reads the file as root and hands the unit a private copy: only root needs access.
    USE_CREDENTIAL=1
    PASSWORD_MODE=0600
    PASSWORD_GROUP=root
    log "systemd $SYSTEMD_VERSION: the broker password reaches the daemon as a credential (LoadCredential=)"
else
    # systemd < 247 ignores LoadCredential=: the daemon reads the file itself (config's password_file).
    USE_CREDENTIAL=0
    PASSWORD_MODE=0640
    PASSWORD_GROUP=$SERVICE_USER
    log "systemd ${SYSTEMD_VERSION/#0/unknown}: no LoadCredential= (needs $CREDENTIALS_MIN_SYSTEMD); the daemon reads $PASSWORD_FILE through password_file"
fi
SYSTEMD_RUNNING=0
[[ -d $ROOT/run/systemd/system ]] && SYSTEMD_RUNNING=1

# pycuda compiles on the board and needs the CUDA toolkit's nvcc.
if [[ -d $CUDA_HOME_DEFAULT/bin ]]; then
    export PATH="$CUDA_HOME_DEFAULT/bin:$PATH"
    export CUDA_ROOT=${CUDA_ROOT:-$CUDA_HOME_DEFAULT}
    log "CUDA toolkit: $CUDA_HOME_DEFAULT/bin added to PATH for the pycuda build"
fi

# ---------------------------------------------------------------------------------------------------
# 1. Build prerequisites from apt (only what is missing)
# ---------------------------------------------------------------------------------------------------
missing=()
if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi
if ! "$PYTHON" -c 'import os, sysconfig, sys; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)'; then
    missing+=(python3-dev)
fi
command -v g++ >/dev/null 2>&1 || missing+=(build-essential)
if ((${#missing[@]})); then
    if [[ $PYTHON != python3 ]]; then
        die "$PYTHON lacks ${missing[*]}: install the matching packages for that interpreter, then re-run"
    fi
    log "Installing build prerequisites: ${missing[*]}"
    run apt-get update
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
else
    log "Build prerequisites present (venv, Python headers, C++ compiler)"
fi

# ---------------------------------------------------------------------------------------------------
# 2. Service user and its groups
# ---------------------------------------------------------------------------------------------------
log "Service user '$SERVICE_USER'"
if ! getent group "$SERVICE_USER" >/dev/null; then
    run groupadd --system "$SERVICE_USER"
fi
if ! getent passwd "$SERVICE_USER" >/dev/null; then
    nologin=$(command -v nologin || echo /usr/sbin/nologin)
    run useradd --system --gid "$SERVICE_USER" --home-dir "$STATE_DIR" --no-create-home \
        --shell "$nologin" --comment "edge-evolver daemon" "$SERVICE_USER"
fi
# video: the GPU device nodes; render: /dev/dri on JetPack 6; jtop: jetson-stats' socket /run/jtop.sock.
for group in video render jtop; do
    if getent group "$group" >/dev/null; then
        run usermod -a -G "$group" "$SERVICE_USER"
    elif [[ $group == jtop ]]; then
        note "no 'jtop' group: jetson-stats' service is not installed, so power comes from another meter."
        note "For jtop: sudo pip3 install -U jetson-stats (system-wide), reboot, then re-run this script."
    elif [[ $group == video ]]; then
        warn "no 'video' group: the service user may not be able to open the GPU"
    fi
done

# ---------------------------------------------------------------------------------------------------
# 3. Virtualenv that sees JetPack's system packages (tensorrt)
# ---------------------------------------------------------------------------------------------------
recreate=0
if [[ -x $VENV/bin/python ]]; then
    venv_version=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo broken)
    if [[ $venv_version != "$PY_VERSION" ]]; then
        log "Existing venv is Python $venv_version, the board's is $PY_VERSION: recreating it"
        recreate=1
    elif ! grep -qiE '^include-system-site-packages *= *true' "$VENV/pyvenv.cfg" 2>/dev/null; then
        log "Existing venv does not see the system site-packages: recreating it"
        recreate=1
    else
        log "Reusing the virtualenv $VENV"
    fi
else
    log "Creating the virtualenv $VENV (--system-site-packages, so JetPack's 'import tensorrt' works)"
    recreate=1
fi
if ((recreate)); then
    run rm -rf "$VENV"
    run mkdir -p "$PREFIX"
    run "$PYTHON" -m venv --system-site-packages "$VENV"
fi

# ---------------------------------------------------------------------------------------------------
# 4. Dependencies
# ---------------------------------------------------------------------------------------------------
requirement_line() { # the first requirement line in $REQUIREMENTS naming package $1, comments removed
    local line
    line=$(grep -E "^[[:space:]]*$1([<>=!~;[:space:]]|\$)" "$REQUIREMENTS" | head -n 1 || true)
    line=${line%%#*}
    line=${line#"${line%%[![:space:]]*}"}
    printf '%s' "${line%"${line##*[![:space:]]}"}"
}
NUMPY_REQ=$(requirement_line numpy)
PYCUDA_REQ=$(requirement_line pycuda)
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

log "Installing dependencies into $VENV"
run "${PIP[@]}" install --upgrade pip setuptools wheel
[[ -n $NUMPY_REQ ]] && run "${PIP[@]}" install "$NUMPY_REQ"
if ((DRY_RUN)); then
    printf '+ %s install -r <%s without pycuda>\n' "${PIP[*]}" "$REQUIREMENTS"
else
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    grep -vE '^[[:space:]]*pycuda([<>=!~;[:space:]]|$)' "$REQUIREMENTS" >"$work/requirements.txt"
    "${PIP[@]}" install -r "$work/requirements.txt"
fi
if [[ -n $PYCUDA_REQ ]]; then
    if command -v nvcc >/dev/null 2>&1; then
        log "Building $PYCUDA_REQ against the venv's numpy (several minutes on a Nano)"
        # --no-build-isolation: build against the numpy installed above, not the one pycuda's
        # pyproject.toml would fetch into a throw-away build environment.
        run "${PIP[@]}" install --no-build-isolation "$PYCUDA_REQ" ||
            warn "pycuda did not build: the TensorRT backend is unavailable until it does (see the pip output above)"
    else
        warn "nvcc not found (looked in $CUDA_HOME_DEFAULT/bin and PATH): pycuda not installed, so the TensorRT backend is unavailable. Install the CUDA toolkit (sudo apt-get install nvidia-jetpack, or cuda-toolkit-<version>) and re-run"
    fi
fi

# ---------------------------------------------------------------------------------------------------
# 5. The edge_evolver package and the edge-evolver command
# ---------------------------------------------------------------------------------------------------
# pip/setuptools on Python 3.6 cannot read this project's PEP 621 pyproject.toml, so the package is
# copied into the venv's site-packages instead of being built by pip.
if ((!DRY_RUN)); then
    SITE_PACKAGES=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
fi
log "Installing edge_evolver into $SITE_PACKAGES"
run rm -rf "$SITE_PACKAGES/edge_evolver.new"
run cp -R "$REPO_ROOT/edge_evolver" "$SITE_PACKAGES/edge_evolver.new"
run find "$SITE_PACKAGES/edge_evolver.new" -name __pycache__ -prune -exec rm -rf {} +
run rm -rf "$SITE_PACKAGES/edge_evolver"
run mv "$SITE_PACKAGES/edge_evolver.new" "$SITE_PACKAGES/edge_evolver"
run "$VENV/bin/python" -m compileall -q "$SITE_PACKAGES/edge_evolver"

revision=$(git -c safe.directory="$REPO_ROOT" -C "$REPO_ROOT" describe --always --dirty 2>/dev/null || echo unknown)
write_file 0644 root root "$PREFIX/INSTALLED" <<EOF
revision=$revision
source=$REPO_ROOT
python=$PY_VERSION
requirements=${REQUIREMENTS##*/}
installed=$(date -u +%Y-%m-%dT%H:%M:%SZ)
EOF

log "Writing the command $WRAPPER"
# -I (isolated): the current directory is not put on sys.path, so running the command inside a
# checkout cannot import the checkout's edge_evolver instead of the installed one. -u: unbuffered
# output for the journal (-I ignores PYTHONUNBUFFERED).
write_file 0755 root root "$WRAPPER" <<EOF
#!/bin/sh
# Written by deploy/jetson/install.sh (revision $revision). Re-run the installer to upgrade.
exec "$VENV/bin/python" -I -u -m edge_evolver "\$@"
EOF

# A file there that is not a link is another installation's: not ours to replace.
COMMAND_LINK=$BIN_DIR/edge-evolver
if [[ -e $COMMAND_LINK && ! -L $COMMAND_LINK ]]; then
    warn "$COMMAND_LINK exists and is not a link: left alone, so 'edge-evolver' on PATH is another installation; remove it and re-run, or run $WRAPPER"
else
    log "Putting edge-evolver on PATH: $COMMAND_LINK -> $WRAPPER"
    run install -d -m 0755 -o root -g root "$BIN_DIR"
    run ln -sfn "$WRAPPER" "$COMMAND_LINK"
fi

# ---------------------------------------------------------------------------------------------------
# 6. Configuration and broker password
# ---------------------------------------------------------------------------------------------------
log "Configuration in $CONFIG_DIR"
run install -d -m 0750 -o root -g "$SERVICE_USER" "$CONFIG_DIR"
if [[ -e $CONFIG_FILE ]]; then
    note "keeping the existing $CONFIG_FILE (it is never overwritten)"
    if [[ -n $BROKER || -n $DEVICE_ID || -n $GROUP ]]; then
        warn "$CONFIG_FILE exists, so --broker/--device-id/--group were not applied: edit it, then sudo systemctl restart edge-evolver"
    fi
    if ((!USE_CREDENTIAL)) && ! grep -qE "^[[:space:]]*password_file[[:space:]]*=[[:space:]]*\"$PASSWORD_FILE\"" "$CONFIG_FILE"; then
        note "systemd < $CREDENTIALS_MIN_SYSTEMD: if the broker needs a password, set in $CONFIG_FILE:"
        note "  password_file = \"$PASSWORD_FILE\""
    fi
else
    password_file_value=""
    ((USE_CREDENTIAL)) || password_file_value=$PASSWORD_FILE
    {
        while IFS= read -r line || [[ -n $line ]]; do
            case $line in
            'broker = '*) [[ -n $BROKER ]] && line="broker = $(toml_string "$BROKER")" ;;
            'device_id = '*) [[ -n $DEVICE_ID ]] && line="device_id = $(toml_string "$DEVICE_ID")" ;;
            'group = '*) [[ -n $GROUP ]] && line="group = $(toml_string "$GROUP")" ;;
            'password_file = '*) line="password_file = $(toml_string "$password_file_value")" ;;
            # The paths this script makes (they differ from the template's only under --root).
            'state_dir = '*) line="state_dir = $(toml_string "$STATE_DIR")" ;;
            'cache_dir = '*) line="cache_dir = $(toml_string "$CACHE_DIR/engines")" ;;
            'trusted_keys = '*) line="trusted_keys = $(toml_string "$CONFIG_DIR/trusted-hosts")" ;;
            esac
            printf '%s\n' "$line"
        done <"$SCRIPT_DIR/config.toml"
    } | write_file 0640 root "$SERVICE_USER" "$CONFIG_FILE"
    note "broker:    ${BROKER:-mqtt://localhost:1883}"
    host=$(uname -n)
    note "device_id: ${DEVICE_ID:-(the hostname, now $host)}"
    note "group:     ${GROUP:-(none)}"
fi
# Empty = no password. With LoadCredential= (systemd >= 247) a missing file would fail every start.
if [[ -e $PASSWORD_FILE ]]; then
    run chown "root:$PASSWORD_GROUP" "$PASSWORD_FILE"
    run chmod "$PASSWORD_MODE" "$PASSWORD_FILE"
else
    run install -m "$PASSWORD_MODE" -o root -g "$PASSWORD_GROUP" /dev/null "$PASSWORD_FILE"
fi
note "broker password: $PASSWORD_FILE (mode $PASSWORD_MODE root:$PASSWORD_GROUP; empty = none)"

# State and cache directories (systemd also creates them at start; a manual run needs them too).
# work/ holds each job's private directory while the measuring process runs it: the service user's only.
run install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$STATE_DIR" "$CACHE_DIR" "$CACHE_DIR/engines"
run install -d -m 0700 -o "$SERVICE_USER" -g "$SERVICE_USER" "$STATE_DIR/work"

# Signed jobs: the host keys this board trusts live under /etc, root's to change and read-only for the
# daemon; the board's own key is made by the service user, so only it can read it.
TRUSTED_HOSTS=$CONFIG_DIR/trusted-hosts
if [[ ! -e $TRUSTED_HOSTS ]]; then
    run install -m 0644 -o root -g root /dev/null "$TRUSTED_HOSTS"
fi
note "trusted host keys: $TRUSTED_HOSTS (add one: sudo edge-evolver keys trust '<host key>')"

# The unit makes the whole file system read-only (ProtectSystem=strict) except the state and cache
# directories: a kept config that puts state_dir or cache_dir elsewhere needs a drop-in.
config_path() { # the value of a top-level `key = "value"` line of $CONFIG_FILE, if any
    sed -nE "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*\"([^\"]*)\".*/\1/p" "$CONFIG_FILE" 2>/dev/null | head -n 1 || true
}
for key in state_dir cache_dir; do
    value=$(config_path "$key")
    case $value in
    "" | "$STATE_DIR" | "$STATE_DIR"/* | "$CACHE_DIR" | "$CACHE_DIR"/*) ;;
    *) warn "$CONFIG_FILE sets $key = \"$value\", which the unit keeps read-only (ProtectSystem=strict): add it with 'sudo systemctl edit edge-evolver' as [Service] ReadWritePaths=$value" ;;
    esac
done

# ---------------------------------------------------------------------------------------------------
# 7. systemd unit
# ---------------------------------------------------------------------------------------------------
if ((NO_SERVICE)); then
    log "--no-service: the systemd unit is not installed or started"
    if [[ -e $UNIT_DIR/$UNIT_NAME ]] && systemctl is-active --quiet "$UNIT_NAME" 2>/dev/null; then
        warn "$UNIT_NAME is running the previous code: sudo systemctl restart edge-evolver"
    fi
else
    log "Installing $UNIT_DIR/$UNIT_NAME"
    # Only ExecStart= names the prefix; under --root the config, state and cache paths move too.
    sed -e "/^ExecStart=/s|/opt/edge-evolver|$PREFIX|" -e "s|/etc/edge-evolver|$ROOT/etc/edge-evolver|g" \
        -e "s|/var/lib/edge-evolver|$ROOT/var/lib/edge-evolver|g" \
        -e "s|/var/cache/edge-evolver|$ROOT/var/cache/edge-evolver|g" "$REPO_ROOT/systemd/$UNIT_NAME" |
        write_file 0644 root root "$UNIT_DIR/$UNIT_NAME"
    if ((SYSTEMD_RUNNING)) || ((DRY_RUN)); then
        run systemctl daemon-reload
        if systemctl is-active --quiet "$UNIT_NAME" 2>/dev/null; then
            run systemctl enable "$UNIT_NAME"
            run systemctl restart "$UNIT_NAME" # the upgrade: run the new code
        else
            run systemctl enable --now "$UNIT_NAME"
        fi
    else
        warn "systemd is not running here: $UNIT_NAME installed but not enabled or started"
    fi
fi

# ---------------------------------------------------------------------------------------------------
# 8. Check: what the service user sees
# ---------------------------------------------------------------------------------------------------
log "edge-evolver info (as $SERVICE_USER)"
if command -v runuser >/dev/null 2>&1; then
    as_service_user=(runuser -u "$SERVICE_USER" --)
else
    as_service_user=(sudo -u "$SERVICE_USER")
fi
if ((DRY_RUN)); then
    run "${as_service_user[@]}" "$WRAPPER" info
else
    # From /, so that nothing in the current directory can shadow the installed package.
    if ! (cd / && "${as_service_user[@]}" "$WRAPPER" info); then
        if ! (cd / && "${as_service_user[@]}" "$VENV/bin/python" -c pass) 2>/dev/null; then
            warn "user $SERVICE_USER cannot run $VENV/bin/python: is $PYTHON inside a private home directory? Use a system interpreter (--python /usr/bin/python3)"
        else
            warn "'edge-evolver info' failed (see above)"
        fi
    fi
fi

# ---------------------------------------------------------------------------------------------------
# 9. Advice
# ---------------------------------------------------------------------------------------------------
log "board key (as $SERVICE_USER)"
if ((DRY_RUN)); then
    run "${as_service_user[@]}" "$WRAPPER" keys init --config "$CONFIG_FILE"
else
    (cd / && "${as_service_user[@]}" "$WRAPPER" keys init --config "$CONFIG_FILE") || warn "'edge-evolver keys init' failed (see above)"
fi

cat <<'EOF'

==> Signed jobs: this board runs only jobs signed by a host key it trusts (docs/security.md).
    on the host:   host-trainer keys init                        (prints the host's public key)
    on the board:  sudo edge-evolver keys trust '<host key>'     (edits the file the service reads)
    on the host:   host-trainer keys enroll <device-id> '<the board key printed above>'
    Check the keys match what the other side printed (read them over the phone, not off the network).

==> For stable, comparable numbers, fix the power mode and lock the clocks before measuring:
    sudo nvpmodel -q                # the current power mode (name and id)
    sudo nvpmodel -m 0              # mode 0 is MAXN on most boards, but the ids differ per board:
                                    # see the POWER_MODEL lines in /etc/nvpmodel.conf
                                    # (the mode persists across reboots; some changes ask for one)
    sudo jetson_clocks --store      # save the current clock settings first
    sudo jetson_clocks              # pin CPU, GPU and memory clocks at the mode's maximum
    sudo jetson_clocks --show       # check what is locked
    sudo jetson_clocks --restore    # back to the stored (dynamic) clocks; a reboot also undoes it
    Locked clocks raise idle power noticeably, so power and energy figures differ from an unlocked
    board. Every result records the power mode and whether the clocks were locked: compare only
    results taken in the same state.
EOF

echo
log "Service: systemctl status edge-evolver; logs: journalctl -u edge-evolver -f"
log "Config:  $CONFIG_FILE (then: sudo systemctl restart edge-evolver)"
if ((${#WARNINGS[@]})); then
    echo
    log "Finished with ${#WARNINGS[@]} warning(s):"
    for warning in "${WARNINGS[@]}"; do
        note "- $warning"
    done
else
    log "Done."
fi
