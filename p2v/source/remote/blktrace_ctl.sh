#!/bin/sh
# Sent to the source by p2v (p2v/source/tracker.py), run with sh -c: POSIX sh only.
# $1 the watchdog's pid, $2 its tag, $3 "renew" (the deadline starts again), "stop" (clean
# up now) or "mark" with $4 the instance, $5 the text to write into its trace and $6... the
# traced devices: their page cache is written out first (fsync of each device, as a
# direct read would), so that a write still cached there is in the trace before the mark.
# Exit status of "mark": 0 written, 4 a device could not be flushed (nothing written).
pid=$1 tag=$2
if [ "$3" = mark ]; then
    instance=$4 text=$5
    shift 5
    if [ "$#" -gt 0 ] && ! sync "$@" 2>/dev/null; then
        # coreutils before 8.24 take no operands: python3's fsync does the same.
        python3 -c 'import os, sys
for d in sys.argv[1:]:
    os.fsync(os.open(d, os.O_RDONLY))' "$@" 2>/dev/null || exit 4
    fi
    echo "$text" > "$instance/trace_marker"
    exit
fi
[ -r "/proc/$pid/cmdline" ] || exit 1
tr '\000' ' ' < "/proc/$pid/cmdline" | grep -q -- "$tag" || exit 1
if [ "$3" = stop ]; then
    kill -TERM "$pid"
else
    kill -USR1 "$pid"
fi
