"""`p2v convert` of a live source (a fixture running in qemu as the physical server) into the
real libvirtd the tests start: the whole job, as a user runs it (`python -m p2v convert`).

The fast test is CI's one real conversion: copy over SSH from the running server, fix,
boot check on virtio with the NIC isolated, register. The slow ones: the uefi fixture, and a
job killed (SIGKILL) during copy and again during fix, then rerun, ending the same way.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from libvirt_env import URI, Libvirtd, boot_checks, open_conn
from schema_check import assert_all_valid, assert_valid

from p2v.demo.live import SourceEndpoint
from p2v.job import STAGES

pytestmark = pytest.mark.e2e

JOB_TIMEOUT = 2400


@pytest.fixture
def out_dir(guest_dir: Path) -> Path:
    """The jobs' --output-dir: under /var/tmp, 0755, so qemu reaches the images."""
    return guest_dir


def convert_argv(ep: SourceEndpoint, name: str, out: Path, network: str) -> list[str]:
    return [sys.executable, "-m", "p2v", "convert", f"ssh://{ep.user}@{ep.host}:{ep.port}",
            "--name", name, "--identity", str(ep.key), "--known-hosts", str(ep.known_hosts),
            "--ssh-config", "/dev/null", "--output-dir", str(out), "--network", network,
            "--memory", "1024", "--verify-timeout", "900", "--json"]


def run(argv: list[str], kill_when: Callable[[dict[str, Any]], bool] | None = None,
        ) -> tuple[int, list[dict[str, Any]], str]:
    """Run p2v, collecting its JSON events; SIGKILL it at the first event kill_when likes."""
    events: list[dict[str, Any]] = []
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True)
        assert proc.stdout is not None
        deadline = time.monotonic() + JOB_TIMEOUT
        for line in proc.stdout:
            event = json.loads(line)
            events.append(event)
            if kill_when is not None and kill_when(event):
                os.kill(proc.pid, signal.SIGKILL)
                break
            assert time.monotonic() < deadline, "convert took too long"
        code = proc.wait(timeout=JOB_TIMEOUT)
        err.seek(0)
        return code, assert_all_valid(events, "events"), err.read().decode(errors="replace")


def check_converted(ep: SourceEndpoint, name: str, network: str, events: list[dict[str, Any]],
                    out: Path, guest_mac: str | None = None) -> dict[str, Any]:
    """The job's report, boot verdict and domain; the guest's MAC is the source's unless
    `guest_mac` says otherwise (--new-macs)."""
    fixture = ep.fixture
    assert fixture is not None
    guest_mac = guest_mac or fixture.mac
    assert events[-1]["event"] == "job-done", events[-3:]
    report = events[-1]["report"]
    assert report["ok"] is True and report["exit_code"] == 0
    assert all(e["job"] == name for e in events)
    # The boot check: virtio, the fixture's hostname, its NIC name with its static address.
    verdict = report["verdict"]
    assert verdict["booted"] is True and verdict["bus"] == "virtio"
    # It booted the domain XML register then defined, as a transient domain now gone.
    assert verdict["via"] == "libvirt-transient" and verdict["domain"].startswith("p2v-verify-")
    assert verdict["hostname"] == fixture.hostname
    nics = {i["name"]: i for i in verdict["interfaces"]}
    assert fixture.nic_name in nics, verdict["interfaces"]
    assert nics[fixture.nic_name]["mac"] == guest_mac
    assert fixture.address in nics[fixture.nic_name]["addresses"]
    assert any("(as on the source)" in line for line in report["network"]), report["network"]
    # The domain: defined, shut off, virtio disk and NIC with the source's MAC.
    conn = open_conn()
    try:
        dom = conn.lookupByName(name)
        assert not dom.isActive()
        root = ET.fromstring(dom.XMLDesc(0))
    finally:
        conn.close()
    assert [t.get("bus") for t in root.iterfind("devices/disk/target")] == ["virtio"]
    (nic,) = root.iterfind("devices/interface")
    assert nic.find("mac").get("address") == guest_mac  # type: ignore[union-attr]
    assert nic.find("model").get("type") == "virtio"  # type: ignore[union-attr]
    assert nic.find("source").get("network") == network  # type: ignore[union-attr]
    assert report["domain"]["uuid"] == dom.UUIDString()
    # The check's own transient domain is gone. Only this guest's checks count: another test
    # run on this host may have its own boot checks running in the same libvirtd.
    assert verdict["domain"] not in conn_domains()
    assert not boot_checks(name)
    work = out / name
    assert sorted(p.stem for p in (work / "markers").glob("*.done")) == sorted(STAGES)
    assert json.loads((work / "report.json").read_text())["ok"] is True
    # Every document the job left is what its schema says (docs/user/schemas.md).
    assert_valid(json.loads((work / "report.json").read_text()), "report")
    assert_valid(json.loads((work / "inventory.json").read_text()), "inventory")
    assert_valid(json.loads((work / "caps.json").read_text()), "caps")
    assert_all_valid([json.loads(line) for line in
                      (work / "events.jsonl").read_text().splitlines()], "events")
    (disk,) = report["disks"]
    assert disk["device"] == "/dev/sda" and disk["size"] == 2048 << 20
    assert 0 < report["bytes_sent"] < disk["size"] // 2
    return report


def conn_domains() -> list[str]:
    conn = open_conn()
    try:
        return [d.name() for d in conn.listAllDomains()]
    finally:
        conn.close()


def clean(name: str, out: Path) -> None:
    code = subprocess.run([sys.executable, "-m", "p2v", "clean", name, "--output-dir", str(out),
                           "--domain"], capture_output=True, text=True, timeout=120)
    assert code.returncode == 0, code.stderr
    assert not (out / name).exists()
    conn = open_conn()
    try:
        assert name not in [d.name() for d in conn.listAllDomains()]
    finally:
        conn.close()


def test_convert_live_bios_server(live_source_bios: SourceEndpoint, libvirtd: Libvirtd,
                                  isolated_network: str, guest_names: list[str],
                                  out_dir: Path) -> None:
    name = "p2vtest-convert-bios"
    guest_names.append(name)
    code, events, err = run(convert_argv(live_source_bios, name, out_dir, isolated_network))
    assert code == 0, err
    starts = [e["stage"] for e in events if e["event"] == "stage-start"]
    assert starts == list(STAGES)
    assert any(e["event"] == "progress" and e["stage"] == "copy" for e in events)
    report = check_converted(live_source_bios, name, isolated_network, events, out_dir)
    assert report["disk_choice"].startswith("copying sda (2.0 GiB, boot disk): every physical")
    # A rerun of a finished job does nothing and reports the same.
    code, again, err = run(convert_argv(live_source_bios, name, out_dir, isolated_network))
    assert code == 0, err
    assert [e["event"] for e in again].count("stage-skip") == len(STAGES)
    assert again[-1]["report"]["domain"] == report["domain"]
    check_jobs_view(live_source_bios, name, out_dir, isolated_network)
    clean(name, out_dir)


def check_jobs_view(ep: SourceEndpoint, done: str, out: Path, network: str) -> None:
    """`p2v jobs` on a state dir holding a finished job (`done`), one that failed and one
    SIGKILLed: each job's state, stage and the command that carries it on."""
    failed, killed = "p2vtest-jobs-failed", "p2vtest-jobs-killed"
    dead = [sys.executable, "-m", "p2v", "convert", "ssh://root@127.0.0.1:9", "--name", failed,
            "--ssh-config", "/dev/null", "--known-hosts", str(ep.known_hosts),
            "--output-dir", str(out), "--json"]
    code, _events, _err = run(dead)
    assert code != 0
    code, _events, _err = run(convert_argv(ep, killed, out, network),
                              lambda e: e["event"] == "stage-start" and e["stage"] == "preflight")
    assert code == -signal.SIGKILL
    proc = subprocess.run([sys.executable, "-m", "p2v", "jobs", "--output-dir", str(out),
                           "--json"], capture_output=True, text=True, timeout=60, check=True)
    jobs = {j["name"]: j for j in json.loads(proc.stdout)["jobs"]}
    assert jobs[done]["state"] == "done" and jobs[done]["done"] == list(STAGES)
    assert jobs[done]["domain"].startswith(f"{done} at ")
    assert jobs[done]["command"] == f"p2v clean {done} --output-dir {out} --domain"
    assert jobs[failed]["state"] == "failed" and jobs[failed]["stage"] == "inspect"
    assert "127.0.0.1" in jobs[failed]["error"], jobs[failed]
    assert jobs[failed]["command"].startswith(f"p2v convert ssh://root@127.0.0.1:9 --name {failed}")
    assert jobs[killed]["state"] == "interrupted" and jobs[killed]["stage"] == "preflight"
    assert jobs[killed]["done"] == ["inspect"] and jobs[killed]["domain"] is None
    resume = shlex.split(jobs[killed]["command"])
    want = [a for a in convert_argv(ep, killed, out, network)[4:] if a != "--json"]
    want += ["--connect", URI]                  # always printed: the shell may differ
    assert resume[:2] == ["p2v", "convert"] and sorted(resume[2:]) == sorted(want), resume
    text = subprocess.run([sys.executable, "-m", "p2v", "jobs", "--output-dir", str(out)],
                          capture_output=True, text=True, timeout=60, check=True).stdout
    print(text)
    assert f"{killed}: interrupted in preflight (1 of 6 stages done)" in text, text
    for name in (failed, killed):
        subprocess.run([sys.executable, "-m", "p2v", "clean", name, "--output-dir", str(out)],
                       capture_output=True, timeout=120, check=True)


@pytest.mark.slow
def test_convert_live_uefi_server(live_source_uefi: SourceEndpoint, libvirtd: Libvirtd,
                                  isolated_network: str, guest_names: list[str],
                                  out_dir: Path) -> None:
    name = "p2vtest-convert-uefi"
    guest_names.append(name)
    fixture = live_source_uefi.fixture
    assert fixture is not None
    # --new-macs (the source stays live on its MAC), and a mapping keyed by the source's MAC.
    code, events, err = run([*convert_argv(live_source_uefi, name, out_dir, isolated_network),
                             "--new-macs", "--network", f"{fixture.mac}={isolated_network}"])
    assert code == 0, err
    pins = dict(json.loads((out_dir / name / "plan.json").read_text())["pins"])
    new_mac = pins[fixture.nic_name]
    assert new_mac != fixture.mac and new_mac.startswith("52:54:00:")
    # The guest kept its interface name and address on the new MAC: fix pinned it there.
    report = check_converted(live_source_uefi, name, isolated_network, events, out_dir,
                             guest_mac=new_mac)
    assert report["verdict"]["firmware"] == "uefi" and report["domain"]["firmware"] == "uefi"
    assert report["verdict"]["root"] == "/dev/mapper/vg0-root"
    clean(name, out_dir)


@pytest.mark.slow
def test_killed_during_copy_and_during_fix_then_rerun(
        live_source_bios: SourceEndpoint, libvirtd: Libvirtd, isolated_network: str,
        guest_names: list[str], out_dir: Path) -> None:
    name = "p2vtest-convert-kill"
    guest_names.append(name)
    argv = convert_argv(live_source_bios, name, out_dir, isolated_network)
    work = out_dir / name

    def in_copy(e: dict[str, Any]) -> bool:
        return e["event"] == "progress" and e["stage"] == "copy" and e["done_chunks"] > 16

    code, events, _err = run(argv, in_copy)
    assert code == -signal.SIGKILL
    assert list(work.glob("*.qcow2.journal")) and list(work.glob("*.qcow2.part"))
    assert not (work / "markers" / "copy.done").exists()

    def in_fix(e: dict[str, Any]) -> bool:
        return e["event"] == "message" and e["stage"] == "fix" and "rebuilding" in e["text"]

    code, events, _err = run(argv, in_fix)
    assert code == -signal.SIGKILL
    (start,) = [e for e in events if e["event"] == "disk-start"]
    assert start["resumed_chunks"] > 16            # the copy went on where it was killed
    assert [e["stage"] for e in events if e["event"] == "stage-skip"] == ["inspect",
                                                                        "preflight"]
    assert (work / "markers" / "copy.done").exists()
    assert not (work / "markers" / "fix.done").exists()
    conn = open_conn()
    try:
        assert name not in [d.name() for d in conn.listAllDomains()]
    finally:
        conn.close()

    code, events, err = run(argv)
    assert code == 0, err
    assert events[0]["resume_at"] == "fix"
    check_converted(live_source_bios, name, isolated_network, events, out_dir)
    clean(name, out_dir)


@pytest.mark.slow
# Three boots (live source, boot check, the started guest) and a fix: past 30 min loaded.
@pytest.mark.timeout(3600)
def test_convert_start_runs_the_registered_guest_to_a_login_prompt_with_its_address(
        live_source_bios: SourceEndpoint, libvirtd: Libvirtd, isolated_network: str,
        guest_names: list[str], out_dir: Path) -> None:
    """`convert --start --serial-console`: the registered domain itself (not a check's
    overlay: the probe is not in it) boots, and its console log, written by libvirt, shows
    the getty's "HOSTNAME login:" and the address agetty reads from the running system."""
    from p2v.verify.console import clean as plain
    from p2v.verify.probe import BEGIN

    name = "p2vtest-convert-start"
    guest_names.append(name)
    fixture = live_source_bios.fixture
    assert fixture is not None
    code, events, err = run([*convert_argv(live_source_bios, name, out_dir, isolated_network),
                             "--start", "--serial-console"])
    assert code == 0, err
    report = events[-1]["report"]
    verdict = report["verdict"]
    assert verdict["booted"] is True and verdict["via"] == "libvirt-transient"
    assert verdict["hostname"] == fixture.hostname
    nics = {i["name"]: i for i in verdict["interfaces"]}
    assert fixture.address in nics[fixture.nic_name]["addresses"], verdict["interfaces"]
    domain = report["domain"]
    assert domain["started"] is True
    conn = open_conn()
    try:
        dom = conn.lookupByName(name)
        assert dom.isActive() and dom.UUIDString() == domain["uuid"]
    finally:
        conn.close()
    log = Path(domain["serial_log"])
    address = fixture.address.split("/")[0]
    login = re.compile(rf"^{re.escape(fixture.hostname)} login:", re.MULTILINE)
    shown = re.compile(rf"p2v: {re.escape(fixture.nic_name)} {re.escape(address)}\b")
    deadline = time.monotonic() + 900
    text = ""
    while not (login.search(text) and shown.search(text)):
        assert time.monotonic() < deadline, f"no login prompt with {address} in {log}:\n" \
                                            f"{text[-3000:]}"
        time.sleep(2)
        text = plain(log.read_text(errors="replace")) if log.exists() else ""
    assert BEGIN not in text            # the boot check's probe stayed in its overlay
    conn = open_conn()
    try:
        conn.lookupByName(name).destroy()
    finally:
        conn.close()
    clean(name, out_dir)
