"""What every guest family's inspection needs: the EFI system partition a UEFI install boots
from (the Linux and Windows fixers both decide the firmware by it)."""

from __future__ import annotations

from p2v.errors import GuestfsError
from p2v.fix.session import GuestSession

ESP_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"


def has_esp(session: GuestSession) -> bool:
    """Whether a disk has a GPT EFI system partition (what a UEFI install boots from)."""
    for disk in session.list_devices():
        try:
            if session.part_get_parttype(disk) != "gpt":
                continue
            for number in session.part_numbers(disk):
                if session.part_get_gpt_type(disk, number).upper() == ESP_GUID:
                    return True
        except GuestfsError:
            continue
    return False
