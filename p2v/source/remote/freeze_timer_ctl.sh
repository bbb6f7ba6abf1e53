#!/bin/sh
# Sent to the source by p2v (p2v/source/freeze.py), run with sh -c: POSIX sh only.
pid=$1 tag=$2
[ -r "/proc/$pid/cmdline" ] || exit 1
tr '\000' ' ' < "/proc/$pid/cmdline" | grep -q -- "$tag" || exit 1
if [ "$3" = kill ]; then
    kill -- "-$pid" 2>/dev/null || kill "$pid"
fi
exit 0
