"""A storage pool's side of a register: upload the images, stage over old volumes, swap in.

A replacing upload goes to VOLUME + STAGING_SUFFIX first; the old volume goes only once the
new definition is in (a failed define must leave the old guest with its disk).
"""

from __future__ import annotations

import os
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from p2v.errors import LibvirtFailed
from p2v.target.libvirt.conn import detail, is_local, libvirt, libvirt_call
from p2v.target.request import ImageInfo, Progress

UPLOAD_CHUNK = 4 << 20
STAGING_SUFFIX = ".p2v-new"


class _Meter:
    """Progress of one upload: a line at most every 2 s, and one at the end."""

    def __init__(self, label: str, total: int, progress: Progress) -> None:
        self.label, self.total, self.progress = label, total, progress
        self.started = self.last = time.monotonic()

    def update(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < 2.0:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-3) / 2**20
        pct = 100 * done // max(self.total, 1)
        self.progress(f"uploading {self.label}: {pct}% "
                      f"({done / 2**20:.0f} of {self.total / 2**20:.0f} MiB, {rate:.0f} MiB/s)")


@dataclass(frozen=True)
class Staged:
    """One disk's volume during a register: `uploaded` is the volume this run created
    (the final name, a staging name, or None when the existing volume is the input)."""

    volume: str
    uploaded: str | None




def volume_xml(name: str, capacity: int, fmt: str = "raw") -> str:
    """A volume of `capacity` bytes (raw: the bytes as sent), allocated as written."""
    root = ET.Element("volume")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "capacity", unit="bytes").text = str(capacity)
    ET.SubElement(root, "allocation", unit="bytes").text = "0"
    ET.SubElement(ET.SubElement(root, "target"), "format", type=fmt)
    return ET.tostring(root, encoding="unicode")



class PoolVolumes:
    """The volumes of a register in the pools of one libvirt connection."""

    def __init__(self, conn: Any, uri: str, progress: Progress) -> None:
        self.conn, self.uri, self.progress = conn, uri, progress
        self.local = is_local(uri)

    def check(self, pool: str, images: Sequence[ImageInfo], volumes: Sequence[str],
              replace: bool) -> list[str]:
        try:
            p = self.conn.storagePoolLookupByName(pool)
        except libvirt.libvirtError:
            try:
                known = ", ".join(sorted(self.conn.listStoragePools()
                                         + self.conn.listDefinedStoragePools()))
            except libvirt.libvirtError:
                known = "?"
            return [f"storage pool {pool!r} does not exist on {self.uri} "
                    f"(pools there: {known or 'none'})"]
        with libvirt_call(f"reading storage pool {pool!r}"):
            if not p.isActive():
                return [f"storage pool {pool!r} is not active; start it with "
                        f"`virsh pool-start {pool}`"]
            p.refresh(0)
            present = set(p.listVolumes())
            available = p.info()[3]
        problems = []
        taken = [v for v in volumes if v in present]
        if taken and not replace:
            problems.append(f"volume(s) {', '.join(taken)} already exist in pool {pool!r}; "
                            "pass --replace or choose another --name")
        needed = sum(i.file_size for i in images)
        if needed > available:
            problems.append(f"pool {pool!r} has {available / 2**30:.1f} GiB free, the images "
                            f"need {needed / 2**30:.1f} GiB")
        return problems


    # ------------------------------------------------------------ changes
    def upload(self, pool: str, image: ImageInfo, volume: str) -> Any:
        """Create the volume and stream the image into it; returns the volume.

        The volume is created raw with the file's size and the file's bytes are sent as they
        are (qcow2 stays qcow2: the domain's driver type says what it is); runs of zeros go
        as holes when the pool supports sparse streams.
        """
        with libvirt_call(f"preparing volume {volume!r} in pool {pool!r}"):
            p = self.conn.storagePoolLookupByName(pool)
            vol = p.createXML(volume_xml(volume, image.file_size), 0)
        meter = _Meter(f"{image.path.name} to {pool}/{volume}", image.file_size, self.progress)
        try:
            self._send(vol, image, meter)
        except BaseException:
            try:
                vol.delete(0)
            except libvirt.libvirtError:
                pass
            raise
        return vol

    def stage(self, pool: str, images: Sequence[ImageInfo],
              volumes: Sequence[str]) -> list[Staged]:
        """Upload every image; where its volume exists already, under a staging name.

        Nothing that exists is deleted here: the old guest keeps its disks until `commit`,
        which runs only after the new definition is in.
        """
        staged: list[Staged] = []
        try:
            for image, volume in zip(images, volumes, strict=True):
                staged.append(self._stage_one(pool, image, volume))
        except BaseException:
            self.discard(pool, staged)
            raise
        return staged

    def _stage_one(self, pool: str, image: ImageInfo, volume: str) -> Staged:
        with libvirt_call(f"reading storage pool {pool!r}"):
            p = self.conn.storagePoolLookupByName(pool)
            p.refresh(0)
            names = set(p.listVolumes())
            old = p.storageVolLookupByName(volume) if volume in names else None
        if old is None:
            self.upload(pool, image, volume)
            return Staged(volume, uploaded=volume)
        if self._is_image(old, image):
            # `register --replace` of the guest's own disk: the input is the volume.
            self.progress(f"{pool}/{volume} is {image.path} itself: kept as it is")
            return Staged(volume, uploaded=None)
        temp = volume + STAGING_SUFFIX
        if temp in names:               # left by a killed run: never anyone's disk
            with libvirt_call(f"removing the leftover volume {pool}/{temp}"):
                p.storageVolLookupByName(temp).delete(0)
        self.upload(pool, image, temp)
        return Staged(volume, uploaded=temp)

    def _is_image(self, vol: Any, image: ImageInfo) -> bool:
        """Is the pool's volume the very file `image` is (same inode, not just same name)?"""
        if not self.local:
            return False
        with libvirt_call("reading a volume's path"):
            path = vol.path()
        try:
            return os.path.samefile(path, image.path)
        except OSError:
            return False

    def discard(self, pool: str, staged: Sequence[Staged]) -> None:
        """A define that failed: remove what this run uploaded; old volumes stay."""
        self._delete_volumes(pool, [s.uploaded for s in staged if s.uploaded])

    def commit(self, pool: str, staged: Sequence[Staged]) -> list[str]:
        """The guest is defined: staged volumes take their final names; returns the paths."""
        paths = []
        for item in staged:
            if item.uploaded is not None and item.uploaded != item.volume:
                self._swap(pool, item.uploaded, item.volume)
            with libvirt_call(f"refreshing pool {pool!r}"):
                p = self.conn.storagePoolLookupByName(pool)
                p.refresh(0)
                paths.append(str(p.storageVolLookupByName(item.volume).path()))
        return paths

    def _swap(self, pool: str, temp: str, volume: str) -> None:
        """Put the staged volume `temp` in place of `volume`.

        A file in a pool on this host is renamed over the old one: the disk is the old or
        the new one at every moment. Elsewhere libvirt has no rename: the old volume is
        deleted and the staged one cloned to its name (the guest is shut off meanwhile).
        """
        action = f"putting the new {pool}/{volume} in place (its data is in {pool}/{temp})"
        with libvirt_call(action):
            p = self.conn.storagePoolLookupByName(pool)
            new, old = p.storageVolLookupByName(temp), p.storageVolLookupByName(volume)
            files = new.info()[0] == old.info()[0] == libvirt.VIR_STORAGE_VOL_FILE
            if self.local and files:
                os.replace(new.path(), old.path())
                p.refresh(0)
                return
            # The clone keeps the format libvirt reads in the staged volume (it probes a
            # file pool's volumes): a raw target would get the qcow2 converted to raw.
            found = ET.fromstring(new.XMLDesc(0)).find("target/format")
            fmt = found.get("type", "raw") if found is not None else "raw"
            xml = volume_xml(volume, int(new.info()[1]), fmt)
            old.delete(0)
            p.createXMLFrom(xml, new, 0)
            new.delete(0)

    def _delete_volumes(self, pool: str, volumes: Sequence[str]) -> None:
        """Best effort: remove volumes this run uploaded, saying which could not go."""
        for volume in volumes:
            try:
                self.conn.storagePoolLookupByName(pool).storageVolLookupByName(volume).delete(0)
                self.progress(f"removed volume {pool}/{volume} (the guest was not defined)")
            except libvirt.libvirtError as exc:
                self.progress(f"warning: could not remove volume {pool}/{volume}: "
                              f"{detail(exc)}; remove it with `virsh vol-delete {volume} "
                              f"--pool {pool}`")

    def _send(self, vol: Any, image: ImageInfo, meter: _Meter) -> None:
        sparse = True
        stream = self.conn.newStream(0)
        try:
            vol.upload(stream, 0, image.file_size, libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)
        except libvirt.libvirtError:
            stream = self.conn.newStream(0)
            sparse = False
            with libvirt_call(f"starting the upload of {image.path}"):
                vol.upload(stream, 0, image.file_size, 0)
        zero = bytes(UPLOAD_CHUNK)
        done = 0
        try:
            with open(image.path, "rb") as f:
                while True:
                    chunk = f.read(UPLOAD_CHUNK)
                    if not chunk:
                        break
                    if sparse and chunk == zero[: len(chunk)]:
                        stream.sendHole(len(chunk), 0)
                    else:
                        view = memoryview(chunk)
                        while view:
                            sent = stream.send(bytes(view))
                            if sent < 0:
                                raise LibvirtFailed(action=f"uploading {image.path}",
                                                    detail="the stream refused data")
                            view = view[sent:]
                    done += len(chunk)
                    meter.update(done)
            stream.finish()
        except libvirt.libvirtError as exc:
            try:
                stream.abort()
            except libvirt.libvirtError:
                pass
            raise LibvirtFailed(action=f"uploading {image.path}", detail=detail(exc)) from None
        except BaseException:
            try:
                stream.abort()
            except libvirt.libvirtError:
                pass
            raise
        meter.update(done, final=True)
