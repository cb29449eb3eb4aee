"""tables.tex and report.html: golden files, the same numbers as report.md and the CSV tables,
LaTeX that compiles in principle (no TeX on CI: checked by structure), a self-contained page."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import polars as pl
import pytest
import synthetic_jobs as sj  # noqa: E402

from trajhpc.results import aggregate as agg
from trajhpc.results import report
from trajhpc.results.htmlreport import render_html
from trajhpc.results.paper import latex_escape, render_latex
from trajhpc.results.studyresult import StudyResult
from trajhpc.results.tables import paired_table


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> StudyResult:
    """report.md's golden study (tests/results/test_report.py): 18 complete jobs, one stopped early, one damaged."""
    root = tmp_path_factory.mktemp("runs")
    sj.write_study(root, "golden")
    sj.write_job(root / "golden", sj.spec_for("B", seed=7), [[0.1] * 3] * 2, study="golden")
    broken = sj.write_job(root / "golden", sj.spec_for("A", seed=7), [[0.1] * 3] * 4, study="golden")
    (broken / "metrics.json").write_text(json.dumps({"schema": "trajhpc.metrics/1"})[:-1])
    (r,) = agg.aggregate([root])
    return r


class _Tables(HTMLParser):
    """The cells of every <table> inside an element with an id (great_tables' wrapper), by that id."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[str] = []
        self._id: str | None = None
        self._cell: list[str] | None = None
        self._foot = False  # the source note, not a row of the table

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "div" and a.get("id", "").startswith("t-"):
            self._id = a["id"][2:]
            self.tables[self._id] = []
        elif tag == "tfoot":
            self._foot = True
        elif tag == "tr" and self._id and not self._foot:
            self.tables[self._id].append([])
        elif tag in ("td", "th") and self._id and self.tables[self._id] and not self._foot:
            self._cell = []
        elif tag == "img":
            self.images.append(a["src"])

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag == "tfoot":
            self._foot = False
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[self._id][-1].append("".join(self._cell).strip())
            self._cell = None


def _html_tables(text: str) -> _Tables:
    parser = _Tables()
    parser.feed(text)
    return parser


def _md_rows(text: str, heading: str) -> list[list[str]]:
    """The rows of the first markdown table under ``heading`` (header row first)."""
    section = text.split(f"\n{heading}\n", 1)[1]
    lines = [ln for ln in section.split("\n\n") if ln.startswith("|")][0].splitlines()
    return [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines if not ln.startswith("|---")]


def _tex_rows(text: str, label: str) -> list[list[str]]:
    """The rows (header first) of the tabular after ``\\label{label}``, cells as LaTeX source."""
    body = text.split(f"\\label{{{label}}}", 1)[1].split("\\toprule\n", 1)[1].split("\\bottomrule", 1)[0]
    body = body.replace("\\midrule\\addlinespace[2.5pt]", "")
    return [[c.strip() for c in row.split(" & ")] for row in body.split("\\\\") if row.strip()]


def _plain(cell: str) -> str:
    """A LaTeX cell as report.md writes it."""
    cell = re.sub(r"\$-\$(?=[0-9.])", "-", cell).replace("$-$", "−")
    return cell.replace("\\textdagger{}", "†").replace("--", "–").replace("\\%", "%")


# ---------------------------------------------------------------- golden files


def test_tables_tex_matches_the_golden_file(result, golden):
    golden("tables.tex", render_latex(result))


def test_report_html_matches_the_golden_file_and_is_deterministic(result, golden):
    # No normalisation: great_tables is given fixed ids and the page holds no time or path.
    text = render_html(result)
    assert render_html(result) == text
    golden("report.html", text)


# ---------------------------------------------------------------- the same numbers


def test_summary_and_paired_cells_equal_report_md(result):
    md = report.render_markdown(result)
    tex, page = render_latex(result), _html_tables(render_html(result)).tables
    summary = _md_rows(md, "## Final accuracy")
    assert [[_plain(c) for c in row] for row in _tex_rows(tex, "tab:golden-summary")] == summary
    assert page["summary"] == summary
    assert page["headline"] == [row[:4] + row[-1:] for row in summary]
    paired = _md_rows(md, "## Paired differences")
    # report.md's table has no test column and no p (Holm): the rest must be equal, cell by cell;
    # tables.tex shows exact and API name only (and the primary's metric: exact here).
    assert [row[:2] + row[3:7] for row in page["paired"]] == paired
    tex_paired = [[_plain(c) for c in row[:2] + row[3:7]] for row in _tex_rows(tex, "tab:golden-paired")]
    assert tex_paired == [row for row in paired if row[1] in ("metric", "exact", "API name")]
    assert len(tex_paired) == 1 + 3 * 2 and "(primary)" in tex_paired[3][0]
    (primary,) = [row for row in paired if "(primary)" in row[0]]
    assert "0.078 [0.050, 0.111]" in primary[4]  # the test reads real rows


def test_report_html_shows_the_numbers_of_summary_csv_and_paired_csv(result, tmp_path):
    result = StudyResult(**{**result.__dict__, "folder": tmp_path / "golden"})
    out = agg.write_outputs(result, plots=True)
    page = (out / "report.html").read_text(encoding="utf-8")
    tables = _html_tables(page)
    summary = pl.read_csv(out / "summary.csv").filter(pl.col("metric") == "exact")
    shown = {row[0]: row[2] for row in tables.tables["summary"][1:]}
    for r in summary.iter_rows(named=True):
        assert shown[r["arm"]] == f"{r['mean']:.3f} [{r['ci_lo']:.3f}, {r['ci_hi']:.3f}]"
    # The interpolated exact @ budget stays in paired.csv (exploratory), out of both reports unless declared.
    paired = pl.read_csv(out / "paired.csv").filter(
        (pl.col("test") == "sign-flip") & ~pl.col("metric").str.starts_with("exact_at_budget"))
    rows = {(row[0].removesuffix(" (primary)"), row[1]): row for row in tables.tables["paired"][1:]}
    for r in paired.iter_rows(named=True):
        row = rows[(f"{r['arm']} − {r['baseline']}", report.METRIC_LABELS[r["metric"]])]
        assert row[5] == f"{r['mean_diff']:.3f} [{r['ci_lo']:.3f}, {r['ci_hi']:.3f}]".replace("-0.000", "0.000")
        assert row[6] == f"{r['p_value']:.4f}"
    assert len(rows) == paired.height
    # The answer comes first: the primary comparison's sentence, before any table.
    first = page.index('class="headline"')
    assert first < page.index("<table") and "B − A in final exact accuracy is 0.078 [0.050, 0.111]" in page
    assert "p = 0.0312 (two-sided sign-flip, exact), over 6 pairs of units" in page
    # Self-contained: every plot inline, nothing fetched.
    assert len(tables.images) == len(list(out.glob("*.png"))) > 0
    assert all(src.startswith("data:image/png;base64,") for src in tables.images)
    assert not re.search(r"""(src|href)=["'](?!data:)|@import|url\((?!data:)""", page)
    assert (out / "tables.tex").read_text() == render_latex(result)


# ---------------------------------------------------------------- LaTeX


def test_latex_escapes_special_characters_and_the_report_signs():
    assert latex_escape("a_b 50% & c − d #1 {x} $y") == "a\\_b 50\\% \\& c $-$ d \\#1 \\{x\\} \\$y"
    assert latex_escape("0.356† / –, -0.004 ≤ 1") == "0.356\\textdagger{} / --, $-$0.004 $\\leq$ 1"
    assert latex_escape("sign-flip, A-slots, 2.5-fold") == "sign-flip, A-slots, 2.5-fold"


def test_tables_tex_compiles_in_principle(result):
    tex = render_latex(result)
    assert tex.isascii(), sorted({c for c in tex if not c.isascii()})
    assert tex.count("\\begin{table}") == tex.count("\\end{table}") == 2
    assert tex.count("\\toprule") == tex.count("\\midrule\\addlinespace") == tex.count("\\bottomrule") == 2
    depth = 0
    for c in re.sub(r"\\[{}%&_$#]", "", tex):
        depth += {"{": 1, "}": -1}.get(c, 0)
        assert depth >= 0
    assert depth == 0
    code = "\n".join(line for line in tex.splitlines() if not line.startswith("%"))
    assert not re.search(r"(?<!\\)[%_#]", code)  # every % _ # escaped outside comments
    assert code.count("$") % 2 == 0
    for label in ("tab:golden-summary", "tab:golden-paired"):
        rows = _tex_rows(tex, label)
        assert {len(r) for r in rows} == {len(rows[0])}  # no stray & inside a cell


def test_a_table_too_long_for_a_page_is_a_longtable_with_its_caption_first(result, monkeypatch):
    from trajhpc.results import paper

    monkeypatch.setattr(paper, "LONG_TABLE_ROWS", 5)  # the summary has 3 rows, the paired table 6
    tex = render_latex(result)
    assert "\\usepackage{booktabs,longtable}" in tex
    assert tex.count("\\begin{longtable}") == 1 and tex.count("\\begin{table}") == 1
    assert re.search(r"\\begin\{longtable\}\{[lr]+\}\n\\caption\{golden: Paired comparisons\}"
                     r"\\label\{tab:golden-paired\}\\\\\n", tex)
    assert len(_tex_rows(tex, "tab:golden-paired")) == 1 + 6


def test_declared_families_and_the_primary_s_metric_reach_both_files(tmp_path):
    sj.write_study(tmp_path, "s1")
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        f"study: s1\nrun_root: {tmp_path}\nconditions: [A, B, {{condition: A, token_budget: {{match: B}}}}]\n"
        "analysis:\n  primary: {arm: A@B, baseline: B, metric: exact_at_budget_total}\n"
        "  secondary:\n    - {metric: name_excl_toolsearcher}\n    - {arm: B, baseline: A, metric: exact}\n")
    (r,) = agg.aggregate([manifest], resamples=100)
    paired = paired_table(r)
    secondary_rows = paired.filter(pl.col("family") == "secondary").to_dicts()
    holm = {(row["arm"], row["metric"]): row["p_holm"] for row in secondary_rows}
    rows = {(row[0], row[1]): row for row in _tex_rows(render_latex(r), "tab:s1-paired")[1:]}
    # The primary's metric joins exact and API name; a declared row of another metric shows too.
    assert rows[("A@B $-$ B (primary)", "exact @ total-token budget")][3] == "primary"
    secondary = rows[("B $-$ A", "API name excl. ToolSearcher")]
    assert secondary[3] == "secondary" and secondary[7] == f"{holm[('B', 'name_excl_toolsearcher')]:.4f}"
    assert rows[("B $-$ A", "exact")][3] == "secondary"
    assert all(row[1] in ("exact", "API name", "exact @ total-token budget") or row[3] != "exploratory"
               for row in rows.values())
    page = render_html(r)
    assert "Primary comparison: A@B − B in exact @ total-token budget is " in page
    shown = ~pl.col("metric").str.starts_with("exact_at_budget") | (pl.col("family") != "exploratory")
    unit = paired.filter((pl.col("test") == "sign-flip") & shown)
    assert len(_html_tables(page).tables["paired"]) == 1 + unit.height


def test_factorial_effects_are_a_table_when_present(tmp_path):
    planted = {"A": 0.2, "calls-only": 0.3, "responses-only": 0.25, "B": 0.5}
    for arm, value in planted.items():
        for seed in (0, 1, 2):
            sj.write_job(tmp_path / "fact", sj.spec_for(arm, seed=seed),
                         [[value + 0.05 * seed] * len(sj.BLOCKS)] * (len(sj.BLOCKS) + 1), blocks=sorted(sj.BLOCKS))
    (r,) = agg.aggregate([tmp_path], resamples=200)
    tex = render_latex(r)
    rows = _tex_rows(tex, "tab:fact-factorial")
    assert rows[0] == ["family", "effect", "metric", "estimate [95\\% CI]", "p", "n"]
    assert ["plain", "interaction", "exact", "0.150 [0.150, 0.150]"] == rows[3][:4]
    md = report.render_markdown(r)
    assert "| plain | interaction | exact | 0.150 [0.150, 0.150] | " + rows[3][4] + " | 3 |" in md
    assert _html_tables(render_html(r)).tables["factorial"][3][:4] == rows[3][:4]


def test_a_study_without_complete_jobs_still_writes_both_files(tmp_path):
    job = sj.write_job(tmp_path / "empty", sj.spec_for("A", seed=0), [[0.1] * 3] * 4, study="empty")
    (job / "metrics.json").write_text("{")
    (r,) = agg.aggregate([tmp_path])
    r.notes.append("a <b> & c")
    assert "% No complete job: no table." in render_latex(r) and "\\begin{table}" not in render_latex(r)
    page = render_html(r)
    assert "No complete job: nothing to compare yet." in page
    assert _html_tables(page).tables["excluded"][1][1] == "corrupt"
    assert "<li>a &lt;b&gt; &amp; c</li>" in page  # text, never markup
