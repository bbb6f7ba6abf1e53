#!/bin/sh
# Sent to the source by p2v (p2v/source/freeze.py), run with sh -c: POSIX sh only.
t=$1 tag=$2; shift 2
# The thaw loop is a program of its own, expanded when it runs, not here.
# shellcheck disable=SC2016
script='sleep "$1"; shift; hex=$1; shift; n=0
while :; do
    for m in "$@"; do fsfreeze -u "$m"; done
    grep -q -e "p2v-[f]reeze-$hex" /proc/[0-9]*/cmdline 2>/dev/null || break
    n=$((n + 1)); [ "$n" -lt 900 ] || break
    sleep 1
done'
if command -v setsid >/dev/null 2>&1; then
    setsid sh -c "$script" "$tag" "$t" "$@" </dev/null >/dev/null 2>&1 &
else
    sh -c "$script" "$tag" "$t" "$@" </dev/null >/dev/null 2>&1 &
fi
echo $!
