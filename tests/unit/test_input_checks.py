"""Pure checks behind the bad-input corpus: SOURCE redaction and host names, the XML text."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from p2v.errors import NotADiskImage, SourceSpecError
from p2v.inputs import check_disk_image
from p2v.model import GuestCaps, SourceInventory
from p2v.source.ssh import parse_source, redact_source
from p2v.target.domain import GuestDisk, domain_xml, plan_domain


@pytest.mark.parametrize(("source", "shown"), [
    ("ssh://root:pw@host", "ssh://root:***@host"),
    ("ssh://root:p@ss:w/rd@host:2222", "ssh://root:***@host:2222"),
    ("root:pw@host", "root:***@host"),
    ("ssh://root@host", "ssh://root@host"),
    ("host", "host"),
])
def test_redact_source(source: str, shown: str) -> None:
    assert redact_source(source) == shown


@pytest.mark.parametrize("source", ["ssh://root@a..b", f"ssh://root@{'x' * 64}.example",
                                    "root@.leading", "ssh://root@web\t01", "web\x00"])
def test_host_names_dns_cannot_carry_are_refused(source: str) -> None:
    with pytest.raises(SourceSpecError) as info:
        parse_source(source, ssh_config=None)
    assert all(c.isprintable() for c in info.value.message)


@pytest.mark.parametrize("source", ["ssh://root@[::1]:22", "root@192.0.2.7", "web01.example",
                                    "ssh://root@xn--bcher-kva.example", "ssh://root@bücher.de"])
def test_good_host_names_pass(source: str) -> None:
    parse_source(source)


def test_a_hostname_with_control_characters_is_escaped_in_the_domain_xml() -> None:
    spec = plan_domain(name="web01", disks=(GuestDisk("qcow2", path="/x.qcow2"),),
                       inventory=SourceInventory(hostname="web\x1b[31m\n01\x01"),
                       caps=GuestCaps())
    xml = domain_xml(spec)
    assert not any(ord(c) < 32 and c not in "\n\t" for c in xml)
    description = ET.fromstring(xml).findtext("description")
    assert description == "converted by p2v from web\\x1b[31m\\n01\\x01"


def test_a_raw_data_disk_needs_no_boot_signature(tmp_path: Path) -> None:
    """Only the boot disk must look like one: a data disk may be an md member, btrfs, ..."""
    data = tmp_path / "data.img"
    data.write_bytes(b"\x01" * (1 << 20))
    check_disk_image(data, boot=False)
    with pytest.raises(NotADiskImage):
        check_disk_image(data)
