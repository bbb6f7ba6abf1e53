"""Source identity: what the disk script prints, and when a recorded identity is not ours."""

from __future__ import annotations

import subprocess

from p2v.source.identity import DISK_ID_SCRIPT, SourceIdentity, mismatch, parse_disk_ids

KEY_A = "ssh-ed25519 SHA256:aaaa"
KEY_B = "ssh-ed25519 SHA256:bbbb"


def test_parse_folds_padding_and_drops_empty_identifiers() -> None:
    text = ("device/wwid\tt10.ATA     QEMU HARDDISK      QM00001  \n"
            "serial\t\x01\n"
            "lsblk\t\n"
            "garbage line\n")
    assert parse_disk_ids(text) == {"device/wwid": "t10.ATA QEMU HARDDISK QM00001"}


def test_same_host_key_and_disk_match() -> None:
    ours = SourceIdentity(KEY_A, {"device/wwid": "naa.5000c5"})
    assert mismatch(ours.to_dict(), ours) is None
    assert mismatch(SourceIdentity(KEY_A).to_dict(), SourceIdentity(KEY_A)) is None


def test_another_host_key_is_another_server_even_with_the_same_disk() -> None:
    why = mismatch(SourceIdentity(KEY_A).to_dict(), SourceIdentity(KEY_B))
    assert why == f"host key {KEY_A}, this source's {KEY_B}"


def test_a_clone_with_the_template_host_key_differs_by_its_disk() -> None:
    theirs = SourceIdentity(KEY_A, {"device/serial": "S1", "device/wwid": "naa.1"})
    why = mismatch(theirs.to_dict(), SourceIdentity(KEY_A, {"device/serial": "S2",
                                                            "device/wwid": "naa.1"}))
    assert why == "disk device/serial 'S1', this source's 'S2'"
    # One side reports identifiers, the other none (or none in common): not the same disk.
    assert mismatch(theirs.to_dict(), SourceIdentity(KEY_A)) is not None
    assert mismatch(SourceIdentity(KEY_A).to_dict(), SourceIdentity(KEY_A, {"wwid": "x"}))
    assert mismatch(theirs.to_dict(), SourceIdentity(KEY_A, {"dm/uuid": "LVM-1"}))
    # A kernel that now shows one more attribute of the same disk: still the same.
    assert mismatch(theirs.to_dict(), SourceIdentity(KEY_A, {**theirs.disk, "wwid": "e"})
                    ) is None


def test_a_record_without_identity_never_matches() -> None:
    ours = SourceIdentity(KEY_A)
    for old in (None, {}, {"disk": {}}, "x", {"host_key": 3}):
        assert mismatch(old, ours) == "it records no source identity: written by an older p2v"
    assert mismatch({"host_key": KEY_A, "disk": "x"}, ours) == "its disk identity is unreadable"


def test_the_script_reports_nothing_for_a_path_without_sysfs(tmp_path: object) -> None:
    out = subprocess.run(["sh", "-c", DISK_ID_SCRIPT, "t", "/nonexistent/dev"],
                         capture_output=True, text=True, check=True)
    assert parse_disk_ids(out.stdout) == {}
