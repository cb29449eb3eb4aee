"""report.html: one self-contained page (tables by great_tables, plots as data URIs, no network).

It opens with the answer: the primary comparison in one sentence and a headline table; then the
methods, the tables of :mod:`trajhpc.results.paperframes` (report.md's numbers), notes, exclusions
and plots. Nothing in it depends on the time or on random ids, so a fixed study renders byte-identically.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from trajhpc.results.paperframes import (
    PaperTable,
    headline_sentence,
    headline_table,
    paper_tables,
)
from trajhpc.results.report import MAX_EXCLUDED_ROWS, PLOT_CAPTIONS, methods_paragraph
from trajhpc.results.studyresult import StudyResult

_STYLE = """
body { font-family: -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif; max-width: 72rem;
       margin: 2rem auto; padding: 0 1rem; color: #222; line-height: 1.45; }
.headline { font-size: 1.15rem; border-left: 4px solid #3b6ea5; padding: 0.5rem 1rem; background: #f3f6fa; }
.note { color: #555; font-size: 0.9rem; }
figure { margin: 1.5rem 0; }
figure img { max-width: 100%; }
figcaption { color: #555; font-size: 0.9rem; }
"""
_MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def table_html(table: PaperTable) -> str:
    """One table as great_tables HTML, its CSS scoped to its own id."""
    from great_tables import GT

    gt = GT(table.frame, id=f"t-{table.key}")
    if table.right:
        gt = gt.cols_align("right", columns=list(table.right))
    if table.note:
        gt = gt.tab_source_note(table.note)
    return gt.as_raw_html()


def data_uri(path: Path) -> str:
    """The file as a ``data:`` URI, so the page needs no file beside it."""
    mime = _MIME.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"{path}: cannot embed a {path.suffix or 'suffix-less'} file in report.html")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _excluded(jobs: pl.DataFrame) -> list[str]:
    bad = jobs.filter(pl.col("status") != "ok").sort("status", "job_id")
    if bad.height == 0:
        return []
    rows = [{"job": r["job_id"], "status": r["status"], "reason": r["reason"] or ""}
            for r in bad.head(MAX_EXCLUDED_ROWS).to_dicts()]
    more = f"… and {bad.height - MAX_EXCLUDED_ROWS} more: see jobs.csv." if bad.height > MAX_EXCLUDED_ROWS else ""
    frame = pl.DataFrame(rows, schema={"job": pl.String, "status": pl.String, "reason": pl.String})
    return ["<h2>Excluded jobs</h2>", table_html(PaperTable("excluded", "Excluded jobs", frame, more))]


def render_html(result: StudyResult, folder: Path | None = None, figures: Sequence[str] = ()) -> str:
    """report.html for one study; ``figures`` are file names in ``folder``, embedded in order."""
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f"<title>Study {_esc(result.study)}</title>", f"<style>{_STYLE}</style>", "</head>", "<body>",
           f"<h1>Study <code>{_esc(result.study)}</code></h1>",
           f'<p class="headline">{_esc(headline_sentence(result))}</p>']
    if result.analysis_changed:
        out.append('<p class="note">The analysis changed after submission: report.md shows the recorded and '
                   "applied versions.</p>")
    if result.units.height:
        out += [table_html(headline_table(result)), "<h2>Methods</h2>", f"<p>{_esc(methods_paragraph(result))}</p>"]
        for table in paper_tables(result):
            out += [f"<h2>{_esc(table.title)}</h2>", table_html(table)]
    if result.notes:
        out += ["<h2>Notes</h2>", "<ul>", *(f"<li>{_esc(n)}</li>" for n in result.notes), "</ul>"]
    out += _excluded(result.jobs)
    if figures:
        if folder is None:
            raise ValueError("report.html: figures given without the folder that holds them")
        out.append("<h2>Plots</h2>")
        for name in figures:
            caption = PLOT_CAPTIONS.get(name, "")
            alt = Path(name).stem.replace("_", " ")
            out.append(f'<figure><img src="{data_uri(folder / name)}" alt="{_esc(alt)}">'
                       + (f"<figcaption>{_esc(caption)}</figcaption>" if caption else "") + "</figure>")
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"
