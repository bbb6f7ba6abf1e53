"""What the boot check puts into a throwaway overlay: a console on ttyS0 and a report script.

Physical servers rarely have a serial console, so nothing the check needs may be assumed
present in the guest; all of it goes into the overlay only, never the image.

The report goes to a second serial port (ttyS1) that only the check reads, then to the
console: a getty starting on ttyS0 hangs up the descriptors open on it, which lost reports.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from p2v.fix.console import KERNEL_LINE, add_console
from p2v.fix.session import GuestSession

BEGIN = "P2V-PROBE-BEGIN"
END = "P2V-PROBE-END"

PROBE_PATH = "/usr/local/sbin/p2v-verify-probe"
UNIT_PATH = "/etc/systemd/system/p2v-verify-probe.service"
UNIT_LINK = "/etc/systemd/system/multi-user.target.wants/p2v-verify-probe.service"

# Reports once the system is up: hostname, root device and every NIC with its addresses.
# Waits (bounded) for a non-loopback address so a static configuration has time to apply.
PROBE_SCRIPT = f"""#!/bin/sh
PATH=/usr/sbin:/usr/bin:/sbin:/bin
i=0
while [ $i -lt 20 ]; do
  ip -o -4 addr show scope global 2>/dev/null | grep -q . && break
  sleep 1; i=$((i+1))
done
{{
echo "{BEGIN}"
echo "hostname $(hostname 2>/dev/null || cat /proc/sys/kernel/hostname)"
echo "root $(findmnt -n -o SOURCE / 2>/dev/null || echo unknown)"
for dev in /sys/class/net/*; do
  name=${{dev##*/}}
  [ "$name" = lo ] && continue
  addrs=$(ip -o addr show dev "$name" scope global 2>/dev/null | awk '{{printf "%s,", $4}}')
  echo "nic $name $(cat "$dev/address") $(cat "$dev/operstate") ${{addrs%,}}"
done
echo "{END}"
}} > /run/p2v-verify-report 2>&1
for port in /dev/ttyS1 /dev/ttyS0; do
  cat /run/p2v-verify-report > "$port" 2>/dev/null
done
"""

UNIT = f"""[Unit]
Description=p2v boot check report (throwaway overlay only)
# Not after multi-user.target: one slow unit there must not hold back the report.
After=network.target
DefaultDependencies=yes

[Service]
Type=oneshot
ExecStart={PROBE_PATH}

[Install]
WantedBy=multi-user.target
"""

GRUB_CONFIGS = (
    "/boot/grub/grub.cfg",
    "/boot/grub2/grub.cfg",
    "/boot/grub/menu.lst",
    "/boot/grub/grub.conf",
)
_BLS_OPTIONS = re.compile(r"^(options\s+.*?)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Prepared:
    os_found: bool
    product: str
    consoles_added: tuple[str, ...]


def prepare_overlay(session: GuestSession) -> Prepared:
    """Put the serial console and the report unit into the (overlay) guest."""
    roots = session.inspect_os()
    if not roots:
        return Prepared(False, "unknown", ())
    root = roots[0]
    product = session.inspect_get_product_name(root)
    session.mount_guest(root)
    changed: list[str] = []
    candidates = list(GRUB_CONFIGS)
    for pattern in ("/boot/efi/EFI/*/grub.cfg", "/boot/loader/entries/*.conf"):
        candidates += session.glob_expand(pattern)
    for path in candidates:
        if not session.is_file(path):
            continue
        text = session.read_text(path)
        regex = _BLS_OPTIONS if path.startswith("/boot/loader/entries/") else KERNEL_LINE
        new = add_console(text, regex)
        if new != text:
            session.write_text(path, new)
            changed.append(path)
    if session.is_dir("/etc/systemd/system"):
        session.mkdir_p("/usr/local/sbin")
        session.write_text(PROBE_PATH, PROBE_SCRIPT, mode=0o755)
        session.write_text(UNIT_PATH, UNIT, mode=0o644)
        session.mkdir_p("/etc/systemd/system/multi-user.target.wants")
        if not session.exists(UNIT_LINK):
            session.ln_s(UNIT_PATH, UNIT_LINK)
    if session.is_dir("/etc/rc.d") or session.is_file("/etc/rc.local"):
        # Guests without systemd run rc.local at the end of boot.
        session.write_text(PROBE_PATH, PROBE_SCRIPT, mode=0o755)
        rc = (session.read_text("/etc/rc.local") if session.is_file("/etc/rc.local")
              else "#!/bin/sh\n")
        if PROBE_PATH not in rc:
            rc = rc.replace("\nexit 0", f"\n{PROBE_PATH} &\nexit 0", 1)
            if PROBE_PATH not in rc:
                rc += f"\n{PROBE_PATH} &\n"
            session.write_text("/etc/rc.local", rc, mode=0o755)
    return Prepared(True, product, tuple(changed))
