# shellcheck shell=bash
# Shell functions shared by the vm-tests scripts, sourced after `prog` is
# set to the script's name (vm-tests/check, ...). Nothing here runs on its
# own.

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
