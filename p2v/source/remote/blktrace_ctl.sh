#!/bin/sh
# Sent to the source by p2v (p2v/source/tracker.py), run with sh -c: POSIX sh only.
# $1 the watchdog's pid, $2 its tag, $3 "renew" (the deadline starts again), "stop" (clean
# up now) or "mark" with $4 the instance and $5 the text to write into its trace.
pid=$1 tag=$2
if [ "$3" = mark ]; then
    echo "$5" > "$4/trace_marker"
    exit
fi
[ -r "/proc/$pid/cmdline" ] || exit 1
tr '\000' ' ' < "/proc/$pid/cmdline" | grep -q -- "$tag" || exit 1
if [ "$3" = stop ]; then
    kill -TERM "$pid"
else
    kill -USR1 "$pid"
fi
