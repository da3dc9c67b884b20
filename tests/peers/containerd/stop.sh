#!/usr/bin/env bash
# Stop the private containerd that start.sh started under DIR, and everything it started.
#
# Usage: stop.sh DIR
#
# Order: containers (runc kill + delete --force with our runc root, so no container process
# outlives its shim), containerd, the shims (pids from their bundles' shim.pid files and any
# process whose command line names our socket), leftover mounts under DIR, shim sockets, libcni
# cache entries and cgroups of this instance. Idempotent: safe to run twice or on a partial
# start. Everything is killed by pid; nothing is matched by process name.
#
# A pid read from a file (containerd.pid, a bundle's init.pid or shim.pid) may be stale: the
# process is gone and, with pid_max 32768 and several test binaries each running containerd,
# runc and kubectl, the number is soon reused, quite possibly by a container process of
# another instance. So no such pid is signalled before the process is proven to be ours:
# containerd by its argv naming our config, a shim by its argv naming our socket, a container
# process by its cgroup lying under our cgroup parent.
set -uo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
[ -d "$1" ] || exit 0
dir=$(cd "$1" && pwd)
sock="$dir/containerd.sock"
pidfile="$dir/containerd.pid"
killed="$dir/killed.pids"   # what each run of this script killed, appended
this_run=()

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

# Whether the argv of pid $1 holds $2 as a whole argument.
argv_has() {
    [ -r "/proc/$1/cmdline" ] && tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null | grep -qxF "$2"
}

# Waits up to $1 tenths of a second for every pid in the rest of the arguments to go.
wait_gone() {
    local n=$1; shift
    while [ "$n" -gt 0 ]; do
        local any=0 p
        for p in "$@"; do alive "$p" && any=1; done
        [ "$any" = 0 ] && return 0
        sleep 0.1
        n=$((n - 1))
    done
    return 1
}

# TERM, wait, then KILL; records what it killed. $2 names our mark in their argv (our config
# for containerd, our socket for the shims): checked before each signal, since a pid that
# ends during the wait may be reused before the KILL.
stop_pids() {
    local what=$1 mark=$2; shift 2
    local pids=() p
    for p in "$@"; do alive "$p" && argv_has "$p" "$mark" && pids+=("$p"); done
    [ ${#pids[@]} -eq 0 ] && return 0
    this_run+=("$what ${pids[*]}")
    echo "$(date -u +%FT%TZ) $what ${pids[*]}" >>"$killed"
    kill -TERM "${pids[@]}" 2>/dev/null
    if ! wait_gone 50 "${pids[@]}"; then
        local left=()
        for p in "${pids[@]}"; do alive "$p" && argv_has "$p" "$mark" && left+=("$p"); done
        [ ${#left[@]} -gt 0 ] && kill -KILL "${left[@]}" 2>/dev/null
        wait_gone 50 "${pids[@]}"
    fi
}

# Pids of processes whose argv contains our socket path as a whole argument (the shims get
# "-address DIR/containerd.sock"; containerd itself gets the config path instead).
pids_naming_socket() {
    local p
    for p in /proc/[0-9]*; do
        [ -r "$p/cmdline" ] || continue
        if tr '\0' '\n' <"$p/cmdline" 2>/dev/null | grep -qxF "$sock"; then
            echo "${p#/proc/}"
        fi
    done
}

# Whether pid $1 runs in a cgroup under this instance's cgroup parent (every container process
# of ours does, and nothing else on the machine).
cgroup_parent=""
[ -f "$dir/cgroup_parent" ] && cgroup_parent=$(cat "$dir/cgroup_parent")
in_our_cgroup() {
    [ -n "$cgroup_parent" ] && [ -r "/proc/$1/cgroup" ] &&
        grep -qE ":${cgroup_parent}(/|\$)" "/proc/$1/cgroup" 2>/dev/null
}

task_dir="$dir/state/io.containerd.runtime.v2.task"

# 1. Containers: kill and delete them through runc itself (our runc root), which also removes
#    their cgroups. Then any init pid still recorded in a bundle.
if command -v runc >/dev/null 2>&1 && [ -d "$dir/runc" ]; then
    for root in "$dir"/runc/*/; do
        [ -d "$root" ] || continue
        for id in $(runc --root "$root" list -q 2>/dev/null); do
            runc --root "$root" kill "$id" KILL >/dev/null 2>&1
            runc --root "$root" delete --force "$id" >/dev/null 2>&1
        done
    done
fi
inits=()
shims=()
if [ -d "$task_dir" ]; then
    for f in "$task_dir"/*/*/init.pid; do
        [ -f "$f" ] && inits+=("$(cat "$f")")
    done
    for f in "$task_dir"/*/*/shim.pid; do
        # Only while that pid is still one of our shims (their argv names our socket).
        if [ -f "$f" ]; then
            p=$(cat "$f")
            alive "$p" && argv_has "$p" "$sock" && shims+=("$p")
        fi
    done
fi
if [ ${#inits[@]} -gt 0 ]; then
    for p in "${inits[@]}"; do
        # Only a process in one of our containers' cgroups: the container may have exited long
        # ago and its pid been reused (see the top of this file).
        if alive "$p" && in_our_cgroup "$p"; then
            this_run+=("container-init $p")
            echo "$(date -u +%FT%TZ) container-init $p" >>"$killed"
            kill -KILL "$p" 2>/dev/null
        fi
    done
fi

# 2. containerd.
if [ -f "$pidfile" ]; then
    pid=$(cat "$pidfile")
    # Make sure the pid is still our containerd (pid reuse): its argv names our config.
    if alive "$pid" && argv_has "$pid" "$dir/config.toml"; then
        stop_pids containerd "$dir/config.toml" "$pid"
    fi
    rm -f "$pidfile"
fi

# 3. Shims (after containerd, so it does not restart or wait for them).
mapfile -t more < <(pids_naming_socket)
stop_pids shim "$sock" ${shims[@]+"${shims[@]}"} ${more[@]+"${more[@]}"}

# 4. Mounts under DIR (rootfs, shm, netns), deepest first.
for _ in 1 2 3; do
    mapfile -t mnts < <(awk -v d="$dir/" 'substr($5, 1, length(d)) == d { print $5 }' /proc/self/mountinfo | sort -r)
    [ ${#mnts[@]} -eq 0 ] && break
    for m in "${mnts[@]}"; do
        m=$(printf '%b' "$m")   # mountinfo escapes blanks as \040
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
    done
done

# 5. Shim sockets (containerd 1.6 puts them in /run/containerd/s/ whatever the config says).
if [ -d "$task_dir" ]; then
    for f in "$task_dir"/*/*/address; do
        [ -f "$f" ] || continue
        a=$(cat "$f"); a=${a#unix://}
        case "$a" in /run/containerd/s/*) rm -f "$a" ;; esac
    done
fi

# 6. libcni's result cache (/var/lib/cni, not configurable in containerd 1.6): our network's
#    entries, and the loopback network's for our sandboxes.
if [ -f "$dir/cni/conf/10-wsb.conflist" ]; then
    net=$(sed -n 's/.*"name": *"\([^"]*\)".*/\1/p' "$dir/cni/conf/10-wsb.conflist")
    [ -n "$net" ] && rm -f /var/lib/cni/results/"$net"-*
fi
for sb in "$dir"/root/io.containerd.grpc.v1.cri/sandboxes/*/; do
    [ -d "$sb" ] || continue
    id=$(basename "$sb")
    rm -f /var/lib/cni/results/cni-loopback-"$id"-*
done

# 7. Cgroups left under our pods' parent (empty once the processes are gone).
if [ -f "$dir/cgroup_parent" ]; then
    parent=$(cat "$dir/cgroup_parent")
    for hier in /sys/fs/cgroup /sys/fs/cgroup/*; do
        d="$hier$parent"
        [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
    done
fi

rm -f "$sock" "$sock.ttrpc" "$dir/debug.sock"
left=$(pids_naming_socket)
if [ -n "$left" ]; then
    echo "stop.sh: processes still running for $dir: $left" >&2
    exit 1
fi
if [ ${#this_run[@]} -eq 0 ]; then
    echo "stop.sh: nothing was running for $dir"
else
    echo "stop.sh: stopped for $dir: $(IFS=';'; echo "${this_run[*]}")"
fi
echo "stop.sh: logs in $dir/containerd.log"
