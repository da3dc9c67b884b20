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

# TERM, wait, then KILL; records what it killed.
stop_pids() {
    local what=$1; shift
    local pids=() p
    for p in "$@"; do alive "$p" && pids+=("$p"); done
    [ ${#pids[@]} -eq 0 ] && return 0
    this_run+=("$what ${pids[*]}")
    echo "$(date -u +%FT%TZ) $what ${pids[*]}" >>"$killed"
    kill -TERM "${pids[@]}" 2>/dev/null
    if ! wait_gone 50 "${pids[@]}"; then
        kill -KILL "${pids[@]}" 2>/dev/null
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
        [ -f "$f" ] && shims+=("$(cat "$f")")
    done
fi
if [ ${#inits[@]} -gt 0 ]; then
    for p in "${inits[@]}"; do
        # Only a process that still runs in another pid namespace than ours is a container's.
        if alive "$p" && [ "$(readlink "/proc/$p/ns/pid")" != "$(readlink /proc/self/ns/pid)" ]; then
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
    if alive "$pid" && tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF "$dir/config.toml"; then
        stop_pids containerd "$pid"
    fi
    rm -f "$pidfile"
fi

# 3. Shims (after containerd, so it does not restart or wait for them).
mapfile -t more < <(pids_naming_socket)
stop_pids shim ${shims[@]+"${shims[@]}"} ${more[@]+"${more[@]}"}

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

rm -f "$sock" "$sock.ttrpc"
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
