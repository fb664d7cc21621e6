# shellcheck shell=bash
# Shell functions shared by the vm-tests scripts, sourced after `prog` is
# set to the script's name (vm-tests/check, ...). Nothing here runs on its
# own.
# shellcheck disable=SC2154  # prog: set by the script that sources this

# How long N seconds are, for a person: "42 s", "3 min 05 s".
duration() {
    if [ "$1" -lt 60 ]; then
        echo "$1 s"
    else
        printf '%d min %02d s\n' $(($1 / 60)) $(($1 % 60))
    fi
}

# Whether messages go to a terminal: there a long step shows its own
# progress (apt's, cargo's); elsewhere (CI, a log) it is one line.
at_terminal() { [ -t 2 ]; }

# step [--logged] LABEL CMD [ARGS...]: runs CMD as one timed step. At a
# terminal it says "PROG: LABEL ..." first; in any case "PROG: LABEL: TIME"
# once CMD has succeeded, or "PROG: LABEL: failed after TIME (exit N)".
# CMD's output is shown as it comes; with --logged, away from a terminal,
# it goes to a file instead (apt's or debootstrap's hundreds of lines) and
# only its last 40 lines are shown, if CMD fails. Returns CMD's status.
# CMD runs in a subshell. When CMD is a shell function, call step on a line
# of its own: in an if, || or && bash ignores set -e inside CMD too.
step() {
    local log='' label t0=$SECONDS rc=0
    if [ "$1" = --logged ]; then
        shift
        at_terminal || log=$(mktemp "${TMPDIR:-/tmp}/thinlayer-step.XXXXXX")
    fi
    label=$1
    shift
    at_terminal && echo "$prog: $label ..." >&2
    if [ -n "$log" ]; then
        "$@" >"$log" 2>&1 </dev/null &
    else
        "$@" &
    fi
    wait "$!" || rc=$?
    step_done "$label" "$t0" "$rc"
    if [ -n "$log" ]; then
        if [ "$rc" != 0 ]; then
            echo "$prog: ---- the last 40 lines of its output ----" >&2
            tail -n 40 "$log" >&2
            echo "$prog: ---- end ----" >&2
        fi
        rm -f "$log"
    fi
    return "$rc"
}

# step_done LABEL START RC: the line that ends a step begun at $SECONDS=START.
step_done() {
    local took
    took=$(duration $((SECONDS - $2)))
    if [ "$3" = 0 ]; then
        echo "$prog: $1: $took" >&2
    else
        echo "$prog: $1: failed after $took (exit $3)" >&2
    fi
}

# The VM mounts file systems of its own (vm-tests/initramfs-init): tmpfs
# on /tmp, /run and /dev/shm, devtmpfs on /dev, proc, sysfs. The host's
# files below the three tmpfs would be hidden there: vm-tests/run shares
# the directories a run needs again, at the same path.
# vm_hidden PATH: whether the VM mounts a file system of its own over
# PATH (absolute, resolved), so that vm-tests/run must share it again.
# Fails with status 2 and a message on stderr for a path the VM can never
# show at its own path.
vm_hidden() {
    case $1/ in
        /run/thinlayer-vm/*|/run/scratch/*)
            echo "$1 is where the VM mounts its per-run directory or its scratch disk" >&2; return 2 ;;
        /tmp/|/run/|/dev/shm/)
            echo "$1 itself is replaced by the VM's own (a directory below it can be shared)" >&2; return 2 ;;
        /tmp/*|/run/*|/dev/shm/*) return 0 ;;
        /dev/*|/proc/*|/sys/*)
            echo "$1 is below /dev, /proc or /sys, which the VM mounts afresh" >&2; return 2 ;;
    esac
    return 1
}
