"""Tables that fit the terminal (trajhpc.core.termtable): columns dropped by value, text folded, none squeezed to nothing."""

from __future__ import annotations

import io

from conftest import assert_fits
from rich.console import Console

from trajhpc.core.termtable import Col, Style, fit_table, fit_widths


def render(table, width: int) -> str:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(table)
    return out.getvalue()


def test_blank_columns_go_then_the_lowest_value_columns():
    cols = [
        Col("name", ["alpha", "beta"]),
        Col("empty", ["", "–"], keep=90, blank_drops=True),
        Col("low", ["x" * 30, "y"], keep=10),
        Col("high", ["z" * 30, "w"], keep=80),
    ]
    kept, widths, dropped = fit_widths(cols, 60)
    assert [c.header for c in kept] == ["name", "high"] and [c.header for c in dropped] == ["low"]
    assert widths == [5, 30]
    kept, _, dropped = fit_widths(cols, 200)
    assert [c.header for c in kept] == ["name", "low", "high"] and not dropped  # blank, not dropped for width


def test_a_folding_column_gets_what_is_left_but_never_less_than_its_minimum():
    detail = "ModuleNotFoundError: No module named 'trajhpc' while importing the job"
    cols = [Col("job id", ["aaaaaaaaaaa1"]), Col("detail", [detail], fold=True, fold_min=20), Col("t", ["1m"], keep=5)]
    kept, widths, dropped = fit_widths(cols, 50)
    assert [c.header for c in kept] == ["job id", "detail", "t"] and widths[1] == 50 - 12 - 2 - 10
    kept, widths, dropped = fit_widths(cols, 40)  # 12 + 20 + 2 + 10 > 40: the low-value column goes first
    assert [c.header for c in dropped] == ["t"] and widths == [12, 40 - 12 - 7]
    text = render(fit_table(cols, 40, title="t"), 40)
    assert_fits(text, 40, ["job id", "detail"])
    assert "not shown at 40 columns: t" in text
    assert "ModuleNotFoundError:" in text and "the job" in text  # folded onto more lines, not cut


def test_headers_are_never_cut_and_multi_line_headers_count_their_longest_line():
    cols = [Col("arm", ["A"]), Col("API name excl.\nToolSearcher", ["0.5"], keep=10), Col("exact", ["0.25"])]
    kept, widths, _ = fit_widths(cols, 80)
    assert widths == [3, 14, 5]
    assert_fits(render(fit_table(cols, 80), 80), 80, ["arm", "API name excl.", "ToolSearcher", "exact"])


def test_compact_tables_cost_one_cell_between_columns():
    cols = [Col("a", ["xx"]), Col("b", ["yyy"])]
    _, widths, _ = fit_widths(cols, 6, Style(compact=True))
    assert widths == [2, 3]
    text = render(fit_table(cols, 6, compact=True), 6)
    assert_fits(text, 6, ["a", "b"])
