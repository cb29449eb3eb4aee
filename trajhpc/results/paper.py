"""tables.tex: the study's summary, paired comparisons and factorial effects as booktabs tables.

Rendered by great_tables from :mod:`trajhpc.results.paperframes`, so the numbers are report.md's.
The file is a fragment to ``\\input`` into a paper whose preamble loads ``booktabs``.
"""

from __future__ import annotations

import re

from trajhpc.results.paperframes import PaperTable, paper_metrics, paper_tables
from trajhpc.results.studyresult import StudyResult

# great_tables escapes LaTeX's special characters; these are the non-ASCII ones the report uses,
# which pdflatex cannot typeset from UTF-8 without extra packages.
UNICODE_TO_LATEX = {
    "−": "$-$",
    "–": "--",
    "†": "\\textdagger{}",
    "×": "$\\times$",
    "≤": "$\\leq$",
    "≥": "$\\geq$",
    "…": "\\ldots{}",
    "≈": "$\\approx$",
    "·": "$\\cdot$",
}
_SPECIAL = {"\\": "\\textbackslash{}", "~": "\\textasciitilde{}", "^": "\\textasciicircum{}",
            **{c: "\\" + c for c in "&%$#_{}"}}


def latex_escape(text: str) -> str:
    """Plain text as LaTeX: the special characters escaped, the report's Unicode signs as macros."""
    return _unicode("".join(_SPECIAL.get(c, c) for c in text))


def _unicode(text: str) -> str:
    text = "".join(UNICODE_TO_LATEX.get(c, c) for c in text)
    # A hyphen before a number is a minus sign, which text mode would set too short.
    return _NEGATIVE.sub("$-$", text)


_NEGATIVE = re.compile(r"(?<![A-Za-z0-9}$-])-(?=[0-9.])")


def _label(study: str, key: str) -> str:
    # \label tolerates few characters beyond these; a study name may hold any.
    return f"tab:{re.sub(r'[^A-Za-z0-9-]+', '-', study)}-{key}"


# A float cannot break across pages: a longer table is a longtable.
LONG_TABLE_ROWS = 40


def table_latex(table: PaperTable, study: str) -> str:
    """One table as a ``table`` float (a ``longtable`` past :data:`LONG_TABLE_ROWS` rows): caption and
    label, booktabs rules, its note under the rules."""
    from great_tables import GT

    gt = GT(table.frame)
    if table.right:
        gt = gt.cols_align("right", columns=list(table.right))
    if table.note:
        gt = gt.tab_source_note(table.note)
    long = table.frame.height > LONG_TABLE_ROWS
    body = gt.as_latex(use_longtable=long)
    # The paper's own font size applies, not great_tables' fixed 12 pt.
    body = re.sub(r"\n+\\fontsize\{[^}]*\}\{[^}]*\}\\selectfont\n+", "\n", body)
    caption = f"\\caption{{{latex_escape(f'{study}: {table.title}')}}}\\label{{{_label(study, table.key)}}}"
    # The caption goes right after the float's opening, or as a longtable's first row.
    opening = re.compile(r"^\\begin\{longtable\}.*$" if long else r"^\\begin\{table\}.*$", re.MULTILINE)
    if not opening.search(body):
        raise RuntimeError(f"great_tables wrote an unexpected LaTeX table: {body[:80]!r}")
    return _unicode(opening.sub(lambda m: m.group(0) + "\n" + caption + ("\\\\" if long else ""), body, count=1))


def render_latex(result: StudyResult) -> str:
    """tables.tex for one study; deterministic (no dates or paths)."""
    tables = paper_tables(result, paper_metrics(result))
    packages = "booktabs" + (",longtable" if any(t.frame.height > LONG_TABLE_ROWS for t in tables) else "")
    out = [
        f"% trajhpc aggregate: tables of study {_unicode(result.study)}, the numbers of report.md.",
        f"% \\input{{}} this file; the preamble needs \\usepackage{{{packages}}}.",
        "",
    ]
    if not tables:
        out.append("% No complete job: no table.")
    out += [table_latex(t, result.study) + "\n" for t in tables]
    return "\n".join(out).rstrip() + "\n"
