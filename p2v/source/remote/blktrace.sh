#!/bin/sh
# Sent to the source by p2v (p2v/source/tracker.py), run with sh -c: POSIX sh only.
# Traces the writes to the copied disks between sync passes, in a tracing instance of its
# own (the server's own tracer is untouched), and removes everything again when the stream
# ends or p2v stops renewing the watchdog.
# $1 hex, $2 grace (s), $3 buffer_size_kb per CPU, $4 the watchdog's program, $5... devices.
# Prints: "P2VTRACE1", per device "D DEVICE MAJ:MIN OFFSET 1" (traced: the whole disk's
# major:minor and the device's first sector on it) or "D DEVICE - 0 0 WHY", then
# "T INSTANCE MOUNTED", then the instance's trace_pipe, and when that ends "E DOG READER"
# (the watchdog's and the reader's exit status: why tracing stopped). A failure before the stream: "X WHY", exit
# 3, nothing left behind.
hex=$1 grace=$2 kb=$3 watchdog=$4
shift 4
echo P2VTRACE1
filter=
for d in "$@"; do
    mm=$(stat -L -c '%t:%T' "$d" 2>/dev/null) || { echo "D $d - 0 0 cannot stat it"; continue; }
    ma=$((0x${mm%:*})) mi=$((0x${mm#*:}))
    s=/sys/dev/block/$ma:$mi off=0
    if [ -r "$s/partition" ]; then
        if ! off=$(cat "$s/start") || ! mm=$(cat "$s/../dev"); then
            echo "D $d - 0 0 its whole disk was not found"
            continue
        fi
        ma=${mm%:*} mi=${mm#*:} s=/sys/dev/block/$mm
    fi
    if [ ! -d "$s/mq" ]; then
        echo "D $d - 0 0 not a request-based disk (device-mapper, md...): its writes are not seen"
        continue
    fi
    echo "D $d $ma:$mi $off 1"
    filter="$filter${filter:+ || }dev == $(( (ma << 20) | mi ))"
done
fail() { echo "X $*"; exit 3; }
[ -n "$filter" ] || fail "no device can be traced"
T=$(awk '$3 == "tracefs" { print $2; exit }' /proc/mounts 2>/dev/null) mounted=0
if [ -z "$T" ]; then
    T=/sys/kernel/tracing
    mount -t tracefs nodev "$T" 2>/dev/null || fail "tracefs is not mounted and cannot be mounted"
    mounted=1
fi
I=$T/instances/p2v-$hex E=$T/instances/p2v-$hex/events/block/block_rq_complete
undo() {
    [ -d "$I" ] && rmdir "$I" 2>/dev/null
    [ "$mounted" = 1 ] && umount "$T" 2>/dev/null
}
if ! mkdir "$I" 2>/dev/null; then
    undo
    fail "cannot make a tracing instance in $T/instances (not permitted, or an old kernel)"
fi
if ! [ -d "$E" ] || ! echo 0 > "$I/tracing_on"; then
    undo
    fail "the kernel has no block:block_rq_complete event"
fi
echo "$kb" > "$I/buffer_size_kb" 2>/dev/null
echo global > "$I/trace_clock" 2>/dev/null
echo 0 > "$I/options/context-info" 2>/dev/null
echo "($filter) && (rwbs ~ \"*W*\" || rwbs ~ \"*D*\" || rwbs ~ \"*N*\")" > "$E/filter" \
    2>/dev/null || echo "$filter" > "$E/filter" 2>/dev/null
if ! echo 1 > "$E/enable"; then
    undo
    fail "cannot enable block:block_rq_complete"
fi
echo "T $I $mounted"
cat "$I/trace_pipe" &
reader=$!
if command -v setsid >/dev/null 2>&1; then
    setsid sh -c "$watchdog" "p2v-trace-watchdog-$hex" "$I" "$grace" "$reader" "$T" \
        "$mounted" "$hex" </dev/null >/dev/null 2>&1 &
else
    sh -c "$watchdog" "p2v-trace-watchdog-$hex" "$I" "$grace" "$reader" "$T" "$mounted" \
        "$hex" </dev/null >/dev/null 2>&1 &
fi
dog=$!
echo 1 > "$I/tracing_on"
echo "p2v-$hex-live $dog" > "$I/trace_marker"
wait "$reader"
r=$?
# The stream ended (p2v stopped it, the link or the reader died): the watchdog cleans up,
# and the stream ends only once it has.
kill -TERM "$dog" 2>/dev/null
wait "$dog"
echo "E $? $r"
exit 0
