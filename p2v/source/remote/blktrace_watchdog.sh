#!/bin/sh
# Sent to the source by p2v (p2v/source/tracker.py) inside blktrace.sh; run detached.
# Keeps p2v's tracing instance only while p2v is there: it writes a numbered heartbeat
# into the trace each second (a reader whose link closed dies writing it out), and removes
# everything once the reader is gone, on SIGTERM, or GRACE seconds after p2v's last renewal
# (SIGUSR1): a cut link or a killed p2v never leaves tracing on. A heartbeat that cannot be
# written means tracing was switched off under p2v: it stops too (writes would be missed).
# $1 instance dir, $2 grace (s), $3 reader pid, $4 tracefs dir, $5 1 if mounted by p2v, $6 hex
# Exit status: 0 stopped (SIGTERM), 3 tracing switched off, 4 no renewal in time, 5 the
# reader ended.
I=$1 grace=$2 reader=$3 T=$4 mounted=$5 hex=$6
left=$grace beat=0 why=4
trap 'left=$grace' USR1
trap 'left=0 why=0' TERM HUP INT
while [ "$left" -gt 0 ]; do
    if ! kill -0 "$reader" 2>/dev/null; then
        why=5
        break
    fi
    beat=$((beat + 1))
    if ! echo "p2v-$hex-beat $beat" > "$I/trace_marker" 2>/dev/null; then
        why=3
        break
    fi
    sleep 1
    left=$((left - 1))
done
# Cleaning up now, whoever asks again (the tracer does when its reader ends).
trap '' TERM HUP INT USR1
echo 0 > "$I/tracing_on" 2>/dev/null
echo 0 > "$I/events/block/block_rq_complete/enable" 2>/dev/null
kill "$reader" 2>/dev/null
n=0
while [ -d "$I" ] && ! rmdir "$I" 2>/dev/null && [ "$n" -lt 30 ]; do
    n=$((n + 1))
    sleep 1
done
if [ "$mounted" = 1 ] && ! [ -d "$I" ]; then
    umount "$T" 2>/dev/null
fi
exit "$why"
