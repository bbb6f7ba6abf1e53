"""The HTML report's renderer and its reading of a work dir: every job a timeline row, every
value escaped (console lines come from the guest), nothing fetched from outside the page,
and the throughput drawn from the progress events a run recorded."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

from p2v.cli import main
from p2v.cli.report import locate
from p2v.errors import InputNotFound, UsageError
from p2v.htmlreport import DiskBar, JobView, ReportView, Sample, Span, duration, render
from p2v.jobview import in_flight, job_view, last_run, marker_spans, read_events, spans, throughput

HOSTILE = '<script>alert("owned")</script>'
T0 = 1_700_000_000.0


def _job(name: str, state: str = "succeeded", **kw: object) -> JobView:
    base = dict(name=name, source=f"ssh://root@{name}", state=state,
                spans=(Span("inspect", T0, T0 + 5), Span("copy", T0 + 5, T0 + 65)),
                disks=(DiskBar("/dev/sda", 8 << 30, 700 << 20, 900 << 20),),
                throughput=(Sample(T0 + 10, 5e6), Sample(T0 + 20, 9e6)))
    base.update(kw)
    return JobView(**base)  # type: ignore[arg-type]


def _batch(*jobs: JobView) -> ReportView:
    return ReportView(title="p2v batch report: fleet.toml", kind="batch", jobs=jobs,
                      facts=(("ledger", "/x/ledger.sqlite"),), generated=T0)


def test_the_timeline_has_one_row_per_job_and_a_section_each() -> None:
    jobs = [_job(f"web{i:02d}") for i in range(7)] + [_job("db01", "failed", error="boom")]
    page = render(_batch(*jobs))
    assert page.count('<g class="timeline-row"') == 8
    for job in jobs:
        assert f'data-job="{job.name}"' in page
        assert f'id="job-{job.name}"' in page
    assert page.count('<tr class="job ') == 8                 # the batch's jobs table
    assert "boom" in page and "700.0 MiB of 8.0 GiB (9%)" in page


def test_a_job_that_never_ran_still_has_its_row() -> None:
    page = render(_batch(_job("a"), JobView(name="b", source="s", state="pending")))
    assert page.count('<g class="timeline-row"') == 2
    assert "no disk copied yet" in page and "no copy progress recorded" in page


def test_hostile_values_are_escaped_everywhere() -> None:
    evil = _job('x"><img src=x onerror=alert(1)>', evidence=(HOSTILE, "login: ok & <b>"),
                error=HOSTILE, not_carried_over=(HOSTILE,), verdict=(("hostname", HOSTILE),),
                source=HOSTILE, facts=(("work dir", HOSTILE),))
    page = render(ReportView(title=HOSTILE, kind="job", jobs=(evil,)))
    assert "<script" not in page.lower() and "<img" not in page.lower()
    assert "&lt;script&gt;alert(&quot;owned&quot;)&lt;/script&gt;" in page
    assert "login: ok &amp; &lt;b&gt;" in page
    assert 'data-job="x&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"' in page


def test_the_page_is_self_contained() -> None:
    page = render(_batch(_job("a"), _job("b", evidence=("see https://example.com/x",))))
    assert not re.search(r"""\b(src|href)\s*=\s*["']?\s*(https?:|//|file:)""", page, re.I)
    assert not re.search(r"<(script|link|iframe|object|embed|img)\b", page, re.I)
    assert "url(" not in page and "@import" not in page
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")


def test_durations_read_like_people_write_them() -> None:
    assert [duration(s) for s in (3.24, 42, 184, 7500)] == [
        "3.2 s", "42 s", "3 min 04 s", "2 h 05 min"]


# ------------------------------------------------------------------ reading a work dir
def _ev(kind: str, at: float, stage: str | None = None, **kw: object) -> dict[str, object]:
    return {"event": kind, "job": "web01", "stage": stage, "time": T0 + at, **kw}


def test_the_last_run_spans_its_stages_and_says_how_each_ended() -> None:
    events = [_ev("job-start", 0), _ev("stage-start", 1, "inspect"),
              _ev("job-interrupted", 3, "inspect"),
              _ev("job-start", 100), _ev("stage-skip", 100, "inspect"),
              _ev("stage-start", 101, "preflight"), _ev("stage-done", 104, "preflight"),
              _ev("stage-start", 104, "copy"), _ev("job-failed", 160, "copy")]
    run = last_run(events)
    assert run[0]["time"] == T0 + 100
    got = [(s.stage, s.end - s.start, s.state) for s in spans(run)]
    assert got == [("preflight", 3, "done"), ("copy", 56, "failed")]
    # a run killed without a word: its stage ends at the last event seen
    killed = spans([_ev("job-start", 0), _ev("stage-start", 1, "copy"), _ev("progress", 9)])
    assert [(s.stage, s.end - s.start, s.state) for s in killed] == [("copy", 8, "interrupted")]


def test_throughput_adds_the_disks_and_survives_a_sync_pass_restart() -> None:
    mib = 1 << 20
    run = [_ev("disk-start", 0, "copy", device="a"),
           _ev("progress", 10, "copy", device="a", wire_bytes=100 * mib),
           _ev("progress", 12, "copy", device="b", wire_bytes=20 * mib),
           _ev("progress", 20, "copy", device="a", wire_bytes=200 * mib),
           _ev("progress", 30, "sync", device="a", wire_bytes=10 * mib)]   # a new pass
    got = throughput(run)
    assert [round(s.rate / mib, 1) for s in got] == [10.0, 10.0, 12.5, 1.0]
    assert [s.time - T0 for s in got] == [10, 12, 20, 30]


def test_throughput_is_thinned_to_a_bounded_line() -> None:
    run = [_ev("progress", i, "copy", device="a", wire_bytes=i * 1000) for i in range(5000)]
    got = throughput(run, limit=100)
    assert 90 <= len(got) <= 101
    assert all(abs(s.rate - 1000) < 1e-6 for s in got)


def test_a_copy_under_way_shows_what_it_sent_so_far(tmp_path: Path) -> None:
    image = tmp_path / "web01-sda.qcow2"
    Path(f"{image}.part").write_bytes(b"x" * 8192)
    run = [_ev("disk-start", 0, "copy", device="/dev/sda", image=str(image), size=1 << 30),
           _ev("progress", 5, "copy", device="/dev/sda", wire_bytes=3 << 20),
           _ev("progress", 9, "copy", device="/dev/sdb", wire_bytes=1)]     # never started
    (bar,) = in_flight(run)
    assert (bar.device, bar.size, bar.wire_bytes) == ("/dev/sda", 1 << 30, 3 << 20)
    assert bar.file_bytes >= 8192


def test_odd_values_in_the_records_never_break_the_page(tmp_path: Path) -> None:
    work = _work_dir(tmp_path)
    (work / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in [
        _ev("job-start", 0), _ev("stage-start", 0, "copy"),
        _ev("disk-start", 0, "copy", device="a", size="big", image=None),
        _ev("progress", 3, "copy", device="a", wire_bytes="lots"),
        _ev("progress", 4, "copy", device="a", wire_bytes=None)]))
    (work / "verify.json").write_text(json.dumps({"booted": True, "elapsed_s": "slow",
                                                  "interfaces": ["eth0"], "evidence": [7]}))
    (work / "report.json").write_text('{"name": "web01", "ok": "maybe"}')     # no source
    (work / "copy.json").write_text('[{"device": "a", "size": "x"}, 3]')
    view = job_view(work)
    assert view is not None and view.state == "interrupted"
    assert [(d.device, d.size) for d in view.disks] == [("a", 0)]
    page = render(ReportView(title="t", kind="job", jobs=(view,)))
    assert page.count('<g class="timeline-row"') == 1 and "<pre" in page


def test_torn_lines_are_skipped_and_a_fifo_never_blocks(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps(_ev("job-start", 0)) + "\n{torn\n" + json.dumps([1]) + "\n")
    assert [e["event"] for e in read_events(path)] == ["job-start"]
    os.mkfifo(tmp_path / "fifo")
    assert read_events(tmp_path / "fifo") == []


def _work_dir(tmp_path: Path, name: str = "web01") -> Path:
    work = tmp_path / name
    (work / "markers").mkdir(parents=True)
    (work / "spec.json").write_text(json.dumps({"source": f"ssh://root@{name}", "name": name,
                                                "output_dir": str(tmp_path)}))
    return work


def test_without_events_the_markers_give_the_stage_times(tmp_path: Path) -> None:
    work = _work_dir(tmp_path)
    (work / "markers" / "inspect.done").write_text(json.dumps(
        {"stage": "inspect", "seconds": 4.0, "finished": "2023-11-14T22:13:24+0000"}))
    assert [(s.stage, s.end - s.start, s.end) for s in marker_spans(work)] == [
        ("inspect", 4.0, 1700000004.0)]
    view = job_view(work)
    assert view is not None and "markers" in view.notes[0]


def test_a_work_dir_becomes_the_page(tmp_path: Path) -> None:
    work = _work_dir(tmp_path)
    events = [_ev("job-start", 0), _ev("stage-start", 0, "copy"),
              _ev("disk-start", 0, "copy", device="/dev/sda"),
              _ev("progress", 5, "copy", device="/dev/sda", wire_bytes=50 << 20),
              _ev("progress", 10, "copy", device="/dev/sda", wire_bytes=80 << 20),
              _ev("stage-done", 11, "copy")]
    (work / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (work / "verify.json").write_text(json.dumps(
        {"booted": False, "reason": "kernel-panic", "evidence": ["ok", HOSTILE]}))
    (work / "report.json").write_text(json.dumps(
        {"name": "web01", "source": "ssh://root@web01", "work_dir": str(work), "ok": False,
         "disks": [{"device": "/dev/sda", "image": "i", "size": 1 << 30,
                    "file_bytes": 90 << 20, "wire_bytes": 80 << 20}],
         "not_carried_over": ["/dev/sdb (a USB disk)"], "failed_stage": "verify",
         "error": "did not boot"}))
    code = main(["report", str(work)])
    assert code == 0
    out = work / "report.html"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    page = out.read_text()
    assert page.count('<g class="timeline-row"') == 1
    assert "80.0 MiB of 1.0 GiB" in page and "/dev/sdb (a USB disk)" in page
    assert "&lt;script&gt;" in page and "<script" not in page
    assert '<polyline class="rate"' in page and "kernel-panic" in page


def test_what_report_is_given_is_told_apart(tmp_path: Path) -> None:
    work = _work_dir(tmp_path)
    state = tmp_path / ".p2v-batch"
    state.mkdir()
    (state / "ledger.sqlite").write_bytes(b"")
    assert locate(work) == ("job", work)
    assert locate(state / "ledger.sqlite") == ("batch", state / "ledger.sqlite")
    assert locate(state) == ("batch", state / "ledger.sqlite")
    assert locate(tmp_path) == ("batch", state / "ledger.sqlite")
    with pytest.raises(InputNotFound):
        locate(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="neither a job's work dir"):
        locate(tmp_path / "empty")


def test_a_bad_ledger_or_output_path_is_one_line_and_its_own_exit_code(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "ledger.sqlite"
    bad.write_text("not sqlite at all, just text long enough to be read as a header....")
    assert main(["report", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ledger" in err
    work = _work_dir(tmp_path)
    assert main(["report", str(work), "-o", str(tmp_path / "no" / "such" / "r.html")]) == 2
    assert "-o" in capsys.readouterr().err
