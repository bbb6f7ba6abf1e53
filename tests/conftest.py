"""Fixtures shared by every test: the cached fixture images and the sources that serve them.

The single conftest of the suite. Images are built (or loaded from the cache) once per
session; a build failure makes the tests that need it error rather than skip, because a
silently skipped e2e suite proves nothing. The fixtures module is imported lazily so unit
tests run on hosts where building images is impossible.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from loop_sources import LoopSource, copy_fixture

from p2v.demo.image import FixtureImage
from p2v.demo.live import LiveSource, SourceEndpoint


def _build(variant: str) -> FixtureImage:
    from p2v.demo.fixtures import build_fixture

    return build_fixture(variant)


@pytest.fixture(scope="session")
def bios_image() -> FixtureImage:
    """The cached BIOS fixture (hostname p2v-bios, NIC eth0); built on first use."""
    return _build("bios")


@pytest.fixture(scope="session")
def uefi_image() -> FixtureImage:
    """The cached UEFI fixture (hostname p2v-uefi, NIC enp0s25, own NVRAM)."""
    return _build("uefi")


@pytest.fixture(scope="session")
def xfsmd_image() -> FixtureImage:
    """LVM on md RAID1 with an XFS root (hostname p2v-xfsmd, NIC enp0s25); not in
    `make fixtures`: built on first use by the slow tests that need it."""
    return _build("xfsmd")


@pytest.fixture(scope="session")
def loop_source_bios(bios_image: FixtureImage) -> Iterator[SourceEndpoint]:
    """The bios fixture's disks, read-only loop devices behind a loopback sshd."""
    with LoopSource(bios_image) as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def live_source_bios(bios_image: FixtureImage) -> Iterator[SourceEndpoint]:
    """The bios fixture running in qemu as the physical server (slow: one boot per session)."""
    with LiveSource(bios_image) as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def live_source_uefi(uefi_image: FixtureImage) -> Iterator[SourceEndpoint]:
    """The uefi fixture running in qemu as the physical server."""
    with LiveSource(uefi_image) as endpoint:
        yield endpoint


@pytest.fixture
def tmp_image_copy(tmp_path: Path) -> Callable[[FixtureImage], FixtureImage]:
    """Return a function that copies a fixture into this test's tmp dir (sparse).

    Tests that write to a fixture's disks (writable loop sources, fix-ups) must use a copy:
    the cached images are shared by the whole session and by later runs.
    """
    counter = iter(range(1_000_000))

    def copy(image: FixtureImage) -> FixtureImage:
        return copy_fixture(image, tmp_path / f"{image.variant}-{next(counter)}")

    return copy


@pytest.fixture(scope="session")
def windows_images() -> dict[str, Path]:
    """Phony Windows 7, Server 2019 and Server 2025 images (raw, cached; never boot): NTFS
    with SYSTEM/SOFTWARE hives enough for libguestfs inspection (tests/winimage.py)."""
    from winimage import build_windows_images

    return build_windows_images()
