#!/bin/sh
# Sent to the source by p2v (p2v/source/inventory.py), run with sh -c: POSIX sh only.
LC_ALL=C; LVM_SUPPRESS_FD_WARNINGS=1; export LC_ALL LVM_SUPPRESS_FD_WARNINGS
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH; export PATH
s() { printf '\n@@p2v %s@@\n' "$1"; }
e() { printf '\n@@p2v-rc %s@@\n' "$?"; }
v() { [ -r "$1" ] && tr -d '\n' < "$1" 2>/dev/null; }
s hostname; cat /proc/sys/kernel/hostname; e
s uname; uname -r && uname -m; e
s os-release; cat /etc/os-release 2>/dev/null || cat /usr/lib/os-release; e
s cpuinfo; cat /proc/cpuinfo; e
s meminfo; cat /proc/meminfo; e
s firmware; if [ -d /sys/firmware/efi ]; then echo uefi; else echo bios; fi; e
s dmi; for f in sys_vendor product_name product_serial board_vendor board_name bios_vendor \
    bios_version; do printf '%s\t%s\n' "$f" "$(v /sys/class/dmi/id/$f)"; done; e
s sysblock; for d in /sys/block/*; do n=${d##*/}
  for f in dev size ro removable queue/rotational queue/logical_block_size device/model \
      device/vendor device/serial device/wwid wwid serial dm/name dm/uuid md/level md/raid_disks; do
    [ -r "$d/$f" ] && printf '%s\t%s\t%s\n' "$n" "$f" "$(v "$d/$f")"; done
  for x in "$d"/slaves/*; do [ -e "$x" ] && printf '%s\tslave\t%s\n' "$n" "${x##*/}"; done
  for p in "$d"/"$n"*; do [ -r "$p/partition" ] || continue; q=${p##*/}
    for f in dev partition start size; do printf '%s\tpart:%s\t%s\n' "$n" "$f" "$q $(v "$p/$f")"
    done
  done
done; e
s lsblk; lsblk -P -b -o NAME,KNAME,PKNAME,TYPE,SIZE,FSTYPE,UUID,LABEL,MOUNTPOINT,MODEL,SERIAL,\
PTTYPE,PARTTYPE,TRAN 2>/dev/null || lsblk -P -b -o NAME,KNAME,TYPE,SIZE,FSTYPE,UUID,LABEL,\
MOUNTPOINT,MODEL; e
s blkid; blkid -c /dev/null -o export; e
s mountinfo; cat /proc/self/mountinfo; e
s df; df -P -k; e
s swaps; cat /proc/swaps; e
s mdstat; cat /proc/mdstat; e
s pvs; pvs --noheadings --units b --nosuffix --separator '|' -o pv_name,vg_name,pv_size,pv_free; e
s vgs; vgs --noheadings --units b --nosuffix --separator '|' \
    -o vg_name,vg_size,vg_free,pv_count,lv_count; e
s lvs; lvs --noheadings --units b --nosuffix --separator '|' \
    -o lv_name,vg_name,lv_size,lv_kernel_major,lv_kernel_minor; e
s sysnet; for d in /sys/class/net/*; do n=${d##*/}
  for f in address operstate mtu type speed ifindex; do
    [ -r "$d/$f" ] && printf '%s\t%s\t%s\n' "$n" "$f" "$(v "$d/$f")"; done
  [ -e "$d/device" ] && printf '%s\tphysical\t1\n' "$n"
  [ -e "$d/device/driver" ] && \
    printf '%s\tdriver\t%s\n' "$n" "$(basename "$(readlink "$d/device/driver")")"
  [ -e "$d/bridge" ] && printf '%s\tkind\tbridge\n' "$n"
  [ -e "$d/bonding" ] && printf '%s\tkind\tbond\n' "$n"
  [ -e "$d/master" ] && printf '%s\tmaster\t%s\n' "$n" "$(basename "$(readlink "$d/master")")"
done; true; e
s ipaddr; ip -o addr show; e
s fib_trie; cat /proc/net/fib_trie; e
s route; cat /proc/net/route; e
s if_inet6; cat /proc/net/if_inet6; e
