# Sourced by scripts/slurm-ci-up.sh and scripts/container-ci.sh (which define log and die).
# apt_ensure LOGFILE PACKAGE...: installs the packages, without their recommends, when any of
# them is missing; a machine that has them all never runs apt. apt's output goes to LOGFILE,
# whose tail is shown if the install fails.
apt_ensure() {
    local logfile=$1 missing=() pkg
    shift
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Without systemd, postinst scripts cannot start services ("policy-rc.d denied execution
    # of start", or podman's socket units): harmless, nothing here relies on them.
    apt-get install -y -qq --no-install-recommends "$@" >"$logfile" 2>&1 ||
        { tail -n 30 "$logfile"; die "apt-get install failed"; }
}
