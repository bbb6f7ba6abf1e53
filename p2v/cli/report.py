"""`p2v report`: a job's or a whole batch's HTML report, one self-contained file."""

from __future__ import annotations

import argparse
from pathlib import Path

from p2v.cli.common import quiet
from p2v.errors import ExitCode, InputNotFound, UsageError

LEDGER_FILE = "ledger.sqlite"
BATCH_DIR = ".p2v-batch"


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write the HTML report of a convert job (its work dir) or of a batch (its ledger)",
        description=(
            "One self-contained HTML file (inline CSS and SVG, nothing fetched from the "
            "network) about a `p2v convert` job or a whole `p2v batch`: a timeline of each "
            "job's stages, bytes sent against disk size, the copy's throughput over time, "
            "the boot check's console evidence and what did not carry over. WORKDIR is a "
            "job's work dir (OUTPUT_DIR/NAME); LEDGER is a batch's ledger.sqlite, its "
            "state dir (OUTPUT_DIR/.p2v-batch) or the batch's OUTPUT_DIR. `p2v batch` "
            "writes the batch's report.html beside its ledger at the end of every run. "
            "Reads only: nothing is locked or changed but the file written (0600)."
        ),
    )
    p.add_argument("target", type=Path, metavar="WORKDIR|LEDGER",
                   help="a job's work dir, or a batch's ledger (or its state or output dir)")
    p.add_argument("-o", "--output", type=Path, metavar="FILE",
                   help="where to write the page (default: report.html in the work dir, "
                        "or beside the ledger)")
    p.set_defaults(func=run)


def locate(target: Path) -> tuple[str, Path]:
    """("job", work dir) or ("batch", ledger file) for what the user named."""
    if not target.exists():
        raise InputNotFound(what="work dir or batch ledger", path=str(target))
    if target.is_file():
        return "batch", target
    if (target / "spec.json").is_file():
        return "job", target
    for ledger in (target / LEDGER_FILE, target / BATCH_DIR / LEDGER_FILE):
        if ledger.is_file():
            return "batch", ledger
    raise UsageError(detail=(f"{target}: neither a job's work dir (no spec.json) nor a batch "
                             f"(no {LEDGER_FILE} or {BATCH_DIR}/{LEDGER_FILE}); give a job's "
                             "OUTPUT_DIR/NAME or a batch's output dir"))


def run(args: argparse.Namespace) -> int:
    from p2v.htmlreport import render
    from p2v.jobview import job_page
    from p2v.secure import replace_private

    kind, path = locate(args.target)
    out = args.output or (path / "report.html" if kind == "job" else
                          path.parent / "report.html")
    try:
        if kind == "job":
            page = job_page(path)
            if page is None:
                raise UsageError(detail=f"{path}/spec.json cannot be read as a job's spec")
            replace_private(out, render(page), "HTML report")
        else:
            from p2v.batch.htmlview import write_batch_html
            from p2v.batch.ledger import Ledger

            with Ledger.open(path, readonly=True) as ledger:
                write_batch_html(path.parent, ledger, out)
    except OSError as exc:
        raise UsageError(detail=f"-o {out}: {exc.strerror or exc}; give a file path in a "
                                "directory you can write") from None
    if not quiet(args):                 # -q: the file is the result
        print(f"HTML report: {out}")
    return ExitCode.OK
