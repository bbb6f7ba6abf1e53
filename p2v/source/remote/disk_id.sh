#!/bin/sh
# Sent to the source by p2v (p2v/source/identity.py), run with sh -c: POSIX sh only.
dev=$(readlink -f "$1") || exit 0
d=/sys/class/block/${dev##*/}
d=$(cd -P "$d" 2>/dev/null && pwd) || exit 0
[ -r "$d/partition" ] && d=${d%/*}
found=
for f in device/wwid wwid device/serial serial dm/uuid; do
    [ -r "$d/$f" ] || continue
    v=$(tr -d '\n' < "$d/$f" 2>/dev/null) || continue
    [ -n "$v" ] && printf '%s\t%s\n' "$f" "$v" && found=1
done
[ -n "$found" ] || printf 'lsblk\t%s\n' "$(lsblk -dno SERIAL,WWN "$dev" 2>/dev/null)"
exit 0
