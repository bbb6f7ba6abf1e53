#!/bin/sh
# Sent to the source by p2v (p2v/source/shreader.py), run with sh -c: POSIX sh only.
# $full (a dd flag or nothing) and $ranges are split into words on purpose.
# shellcheck disable=SC2086
mode=$1 dev=$2
test -e "$dev" || exit 3
test -b "$dev" || exit 4
size=$(blockdev --getsize64 "$dev" 2>/dev/null) || size=
case $size in ''|*[!0-9]*)
    name=$(readlink -f "$dev") && name=${name##*/} &&
        read -r sectors < "/sys/class/block/$name/size" && size=$((sectors * 512)) || size= ;;
esac
case $size in ''|*[!0-9]*) exit 6 ;; esac
if [ "$mode" = probe ]; then
    py=0; gz=0; zs=0
    command -v python3 >/dev/null 2>&1 && py=1
    command -v gzip >/dev/null 2>&1 && gz=1
    command -v zstd >/dev/null 2>&1 && zs=1
    echo "$size $py $gz $zs"
    exit 0
fi
# $4, the codec p2v asks for: zstd (gzip where the source lacks it), gzip or none.
cs=$3 codec=$4
# All of stdin before any output: the sender never waits on us while we wait on it.
[ "$mode" = read ] && { ranges=$(cat) || exit 7; }
[ "$codec" = zstd ] && ! command -v zstd >/dev/null 2>&1 && codec=gzip
[ "$codec" = gzip ] && ! command -v gzip >/dev/null 2>&1 && codec=none
case $codec in
    zstd) pack='zstd -q -1 -c' kind=S ;;
    gzip) pack='gzip -1 -c' kind=G ;;
    *) codec=none pack= ;;
esac
full=
dd if=/dev/null of=/dev/null iflag=fullblock count=0 2>/dev/null && full=iflag=fullblock
# iflag=direct reads past the device's cache, which a mounted filesystem's writes bypass.
dd if="$dev" of=/dev/null bs=65536 count=1 iflag=direct 2>/dev/null && full=$full${full:+,}direct
case $full in *direct) full=iflag=${full#iflag=} ;; esac
if [ "$mode" = hash ]; then
    # The sync's hash list (p2v/source/hasher.py): one line per chunk, nothing else sent.
    printf 'P2VHASH1 %s %s\n' "$size" "$cs"
    i=0
    while [ $((i * cs)) -lt "$size" ]; do
        nz=$( { dd if="$dev" bs="$cs" skip="$i" count=1 $full 2>/dev/null || echo X; } |
             tr -d '\000' | head -c 1 | wc -c)
        if [ "$nz" -eq 0 ]; then
            printf '%s Z\n' "$i"
        else
            h=$(dd if="$dev" bs="$cs" skip="$i" count=1 $full 2>/dev/null | sha256sum) || exit 5
            printf '%s %s\n' "$i" "${h%% *}"
        fi
        i=$((i + 1))
    done
    printf 'E\n'
    exit 0
fi
exec 4>&1
printf 'P2VSH2 %s %s %s\n' "$size" "$cs" "$codec"
set -f
IFS=',
'
set -- $ranges
IFS=' '
for r in "$@"; do
    i=${r%-*} end=${r#*-}
    while [ "$i" -lt "$end" ]; do
        off=$((i * cs))
        [ "$off" -ge "$size" ] && break
        n=$cs
        [ $((off + n)) -gt "$size" ] && n=$((size - off))
        # A failed read must never pass as zeros: dd's failure adds a non-zero byte (and
        # the chunk goes on to the verified read below, which reports it).
        nz=$( { dd if="$dev" bs="$cs" skip="$i" count=1 $full 2>/dev/null || echo X; } |
             tr -d '\000' | head -c 1 | wc -c)
        if [ "$nz" -eq 0 ]; then
            printf 'Z %s %s\n' "$i" "$n"
            i=$((i + 1))
            continue
        fi
        # A 64 KiB sample decides: the chunk goes compressed if the sample shrinks by 5 %.
        k=R
        if [ -n "$pack" ]; then
            c=$(dd if="$dev" bs=65536 skip=$((off / 65536)) count=1 2>/dev/null | $pack | wc -c)
            s=65536
            [ "$n" -lt "$s" ] && s=$n
            [ $((c * 20)) -lt $((s * 19)) ] && k=$kind
        fi
        printf 'D %s %s %s\n' "$i" "$n" "$k"
        if [ "$k" != R ]; then
            h=$( { dd if="$dev" bs="$cs" skip="$i" count=1 $full 2>/dev/null |
                   tee /dev/fd/3 | $pack >&4; } 3>&1 | sha256sum ) || exit 5
        else
            h=$( { dd if="$dev" bs="$cs" skip="$i" count=1 $full 2>/dev/null |
                   tee /dev/fd/3 >&4; } 3>&1 | sha256sum ) || exit 5
        fi
        printf 'H %s\n' "${h%% *}"
        i=$((i + 1))
    done
done
printf 'E\n'
