"""Rendering of aggregate results: report.md and a rich terminal summary (plots: :mod:`trajhpc.results.plots`).

Only presentation lives here; every number comes from :class:`trajhpc.results.studyresult.StudyResult`.
The markdown holds no paths or timestamps, so a fixed study renders byte-identically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import polars as pl

from trajhpc.job.scoring import SCORE_KEYS
from trajhpc.results import families, traineval
from trajhpc.results.ceilings import ceiling_cells, ceiling_note
from trajhpc.results.continual import CONTINUAL_METRICS
from trajhpc.results.studyresult import StudyResult
from trajhpc.results.tables import paired_table
from trajhpc.study.comparison import SIGN_FLIP

METRIC_LABELS = {
    "exact": "exact",
    "name": "API name",
    "name_excl_toolsearcher": "API name excl. ToolSearcher",
    "exact_at_budget_supervised": "exact @ supervised-token budget",
    "exact_at_budget_total": "exact @ total-token budget",
    "exact_retrieval": "exact, ToolSearcher by retrieval",
}
STATIC_CAVEAT = (
    "Scores are static string matches of the generated call against the gold call, not API-Bank's "
    "execution-based metric: exact needs the same API name, the same argument keys and equal values, "
    "which is stricter than upstream for free-text, date and ToolSearcher arguments."
)
MAX_EXCLUDED_ROWS = 50
PLOT_CAPTIONS = {
    "accuracy_by_stage.png": "Accuracy after each stage: mean over units, shaded 95% bootstrap CI (the legend "
                             "says when a band has zero width); points dodged sideways so arms that coincide show.",
    "accuracy_vs_tokens.png": "Exact accuracy against cumulative tokens; the dashed line is the common budget.",
    "rmatrix.png": "R[stage][block] by position: column k is the block each unit trained k-th.",
    "rmatrix_by_block.png": "R[stage][block] by domain: each block's accuracy after each stage, mean over "
                            "seeds and orders.",
    "paired_forest.png": "Paired differences with 95% CIs; the primary comparison is marked.",
    "loss_curves.png": "Training loss per optimizer step, mean over units, stages marked.",
}


# ---------------------------------------------------------------- formatting helpers


def _num(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "–"
    text = f"{x:.{digits}f}"
    # -0.000 reads as a sign that is not there.
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def _int(x: float | None) -> str:
    return "–" if x is None else f"{round(x):,}"


def _sci(x: float | None) -> str:
    return "–" if x is None else f"{x:.3g}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _ci(row: dict[str, Any], digits: int = 3) -> str:
    """'mean [lo, hi]', or just the mean when there is no CI (fewer than 2 units)."""
    if row.get("mean") is None:
        return "–"
    ci = f" [{_num(row['ci_lo'], digits)}, {_num(row['ci_hi'], digits)}]" if row.get("ci_lo") is not None else ""
    return f"{_num(row['mean'], digits)}{ci}"


def _diff(row: dict[str, Any]) -> str:
    return _ci({"mean": row["mean_diff"], "ci_lo": row["ci_lo"], "ci_hi": row["ci_hi"]})


def _p(p: float | None, exact: bool) -> str:
    if p is None:
        return "–"
    return f"{p:.4f}" + ("" if exact else " (MC)")


def _cell(text: str) -> str:
    # A '|' or a line break inside a cell would break the markdown table.
    return " ".join(text.split("\n")).replace("|", "\\|")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def curve_of(stages: pl.DataFrame, arm: str, metric: str) -> pl.DataFrame:
    """One arm's per-stage estimates of one metric, by stage."""
    return stages.filter((pl.col("arm") == arm) & (pl.col("metric") == metric)).sort("stage")


def _lookup(summary: pl.DataFrame, arm: str, metric: str) -> dict[str, Any]:
    rows = summary.filter((pl.col("arm") == arm) & (pl.col("metric") == metric)).to_dicts()
    return rows[0] if rows else {}


# ---------------------------------------------------------------- markdown


def methods_paragraph(result: StudyResult) -> str:
    """A short methods text built from the data: units, seeds, orders, exclusions, bootstrap settings."""
    u, jobs, budget = result.units, result.jobs, result.budgets
    seeds = sorted(u["seed"].unique().to_list())
    orders = u["order"].n_unique()
    n_stages = ", ".join(map(str, sorted(u["n_stages"].unique().to_list())))
    blocks = result.long["block"].n_unique()
    excluded = jobs.filter(pl.col("status") != "ok")
    counts = excluded.group_by("status").len().sort("status").rows()
    excl = ", ".join(f"{n} {s}" for s, n in counts) or "none"
    pairs = result.paired.filter(pl.col("metric") == "exact").select("arm", "baseline", "pairs").rows()
    pair_text = "; ".join(f"{a} vs {b}: {n}" for a, b, n in pairs) or "none"
    arms = ", ".join(f"{a} ({u.filter(pl.col('arm') == a).height})" for a in result.arms)
    return " ".join(
        [
            f"{jobs.filter(pl.col('status') != 'missing').height} job directories were found; {u.height} complete "
            "jobs entered the statistics and "
            f"{excluded.height} were excluded ({excl}).",
            f"A unit is one job, i.e. one (seed, order) pair of an arm: {_count(len(seeds), 'seed')} "
            f"({', '.join(map(str, seeds))}), {_count(orders, 'block order')}, {n_stages} training stage(s) over "
            f"{_count(blocks, 'evaluated block')}; units per arm: {arms}.",
            "A unit's final score is the mean over evaluated blocks after its last stage; arms are summarised by "
            "the mean, the standard deviation and a 95% percentile bootstrap CI over units "
            f"({result.resamples:,} resamples, numpy default_rng({result.seed})).",
            f"Paired differences match units on (seed, order) (pairs: {pair_text}); p-values are two-sided "
            "sign-flip permutation tests, exact when 2^pairs ≤ 100,000, otherwise Monte Carlo (MC) with "
            f"{result.resamples:,} draws (seed {result.seed}).",
            "Continual-learning metrics use each unit's accuracy matrix R[stage][block] (b_i = the i-th trained "
            "block, T = the last stage): BWT = mean over i<T of R[T][b_i] − R[i][b_i]; forgetting (Chaudhry) = "
            "mean over i<T of max_{1≤l<T} R[l][b_i] − R[T][b_i], as Chaudhry et al. (2018) define it; forgetting "
            "(since learned) = mean over i<T of max_{i≤l<T} R[l][b_i] − R[T][b_i], which leaves out scores "
            "reached before the block was trained; FWT = mean over i≥2 of R[i−1][b_i] − R[0][b_i], against "
            "stage 0, the untrained (zero-shot) model, not a randomly initialised one as in Lopez-Paz & "
            "Ranzato (2017).",
            "At equal compute, each unit's mean exact accuracy is interpolated linearly between stages along its "
            "cumulative tokens (stage 0 at 0) at the smallest final count of any unit: "
            f"{_int(budget.get('supervised'))} supervised or {_int(budget.get('total'))} total tokens.",
            STATIC_CAVEAT,
        ]
    )


def _excluded_section(jobs: pl.DataFrame) -> list[str]:
    bad = jobs.filter(pl.col("status") != "ok").sort("status", "job_id")
    if bad.height == 0:
        return []
    rows = [[r["job_id"], r["status"], r["reason"] or ""] for r in bad.head(MAX_EXCLUDED_ROWS).to_dicts()]
    out = ["## Excluded jobs", "", _table(["job", "status", "reason"], rows), ""]
    if bad.height > MAX_EXCLUDED_ROWS:
        out += [f"… and {bad.height - MAX_EXCLUDED_ROWS} more: see jobs.csv.", ""]
    return out


def _accuracy_section(result: StudyResult) -> list[str]:
    s = result.summary
    # exact_retrieval comes from the prediction files: shown when some unit has it.
    retrieval = ["exact_retrieval"] if any(_lookup(s, arm, "exact_retrieval").get("n") for arm in result.arms) else []
    metrics = [SCORE_KEYS[0], *retrieval, *SCORE_KEYS[1:]]
    rows = [
        [arm, str(_lookup(s, arm, "exact").get("n", 0)), *(_ci(_lookup(s, arm, m)) for m in metrics),
         " / ".join(ceiling_cells(result.ceiling, result.units, arm))]
        for arm in result.arms
    ]
    header = ["arm", "units", "exact", *(["exact, ToolSearcher by retrieval"] if retrieval else []), "API name",
              "API name excl. ToolSearcher", "parse failures", "argument F1", "ceiling exact / name (pooled)"]
    ceiling = ceiling_note(result.ceiling, result.units, result.arms)
    note = f"Mean [95% bootstrap CI] over units; sd in summary.csv. {ceiling}" + (
        " exact, ToolSearcher by retrieval: a ToolSearcher call counts when its keywords retrieve the gold "
        "keywords' tool (see the notes for how far the retriever agrees with the data)." if retrieval else "")
    return ["## Final accuracy", "", note, "", _table(header, rows), ""]


def _continual_section(result: StudyResult) -> list[str]:
    s = result.summary
    metrics = [f"{m}_{score}" for score in ("exact", "name") for m in CONTINUAL_METRICS]
    rows = [[arm, *(_ci(_lookup(s, arm, m)) for m in metrics)] for arm in result.arms]
    names = {"bwt": "BWT", "forgetting_chaudhry": "forgetting (Chaudhry)",
             "forgetting_since_learned": "forgetting (since learned)", "fwt": "FWT"}
    header = ["arm", *(f"{names[m]} {score}" for score in ("exact", "name") for m in CONTINUAL_METRICS)]
    out = ["## Continual learning", "", _table(header, rows), ""]
    stages = result.stages
    numbers = sorted(stages["stage"].unique().to_list())
    for metric, title in (("acc_exact", "all blocks"), ("acc_seen_exact", "blocks trained so far")):
        rows = []
        for arm in result.arms:
            curve = {r["stage"]: r for r in curve_of(stages, arm, metric).to_dicts()}
            rows.append([arm, *(_ci(curve.get(t, {})) for t in numbers)])
        header = ["arm", *(f"stage {t}" for t in numbers)]
        out += [f"### Exact accuracy after each stage ({title})", "", _table(header, rows), ""]
    return out


_PARAMS_SOURCES = {"resources": "the counts each job recorded", "model table": "trajhpc's table of known models"}


def _compute_section(result: StudyResult) -> list[str]:
    s = result.summary
    rows = []
    for arm in result.arms:
        sup, tot, flops = (_lookup(s, arm, m) for m in ("supervised_tokens", "total_tokens", "flops"))
        rows.append([
            arm, _int(sup.get("mean")), _num(sup.get("ratio_vs_A")), _int(tot.get("mean")),
            _num(tot.get("ratio_vs_A")), _sci(flops.get("mean")), _ci(_lookup(s, arm, "exact_per_m_supervised"), 2),
        ])
    header = ["arm", "supervised tokens", "ratio vs A", "total tokens", "ratio vs A", "training FLOPs",
              "exact per M supervised tokens"]
    sources = result.units["params_source"].drop_nulls().unique().sort().to_list()
    flops_note = (
        f"FLOPs ≈ (4·N_base + 6·N_LoRA) × padded tokens, with parameter counts from "
        f"{' and '.join(_PARAMS_SOURCES.get(s, s) for s in sources)}."
        if sources
        else "FLOPs are unknown: the jobs did not record parameter counts and the model is not in the table."
    )
    budget = result.budgets
    at_budget = [
        [arm, *(_ci(_lookup(s, arm, f"exact_at_budget_{c}")) for c in ("supervised", "total"))] for arm in result.arms
    ]
    return [
        "## Compute", "", "Mean cumulative tokens per unit after the last stage; ratio = arm mean / A mean.", "",
        _table(header, rows), "", flops_note, "",
        *_stage_compute_lines(result),
        "### Interpolated to equal compute", "",
        f"Exact accuracy interpolated at {_int(budget.get('supervised'))} supervised / "
        f"{_int(budget.get('total'))} total tokens. Caveat: the budget is the smallest arm's final count, "
        "so an arm that reads more tokens is read before it has trained its last block: this mixes "
        "compute with domain coverage. The stage-by-stage table and the token-matched arm compare like with like.", "",
        _table(["arm", "exact @ supervised budget", "exact @ total budget"], at_budget), "",
    ]


def _stage_compute_lines(result: StudyResult) -> list[str]:
    """Tokens and accuracy at the end of each stage (the same blocks trained), and the token-matched control."""
    c = result.compute
    if c.height == 0:
        return []
    rows = [
        [str(r["stage"]), r["arm"], _int(r["total_tokens"]), _num(r["total_ratio_vs_A"]),
         _ci({"mean": r["acc_exact"], "ci_lo": r["acc_exact_ci_lo"], "ci_hi": r["acc_exact_ci_hi"]}),
         _num(r["acc_seen_exact"])]
        for r in c.sort("stage").to_dicts() if r["stage"] > 0
    ]
    out = [
        "### Stage by stage (the same blocks trained)", "",
        "After stage k every arm has trained the same k blocks: cumulative total tokens (mean per unit), the "
        "ratio to A at that stage, exact accuracy over all blocks and over the blocks trained so far.", "",
        _table(["stage", "arm", "total tokens", "ratio vs A", "exact (all blocks)", "exact (trained blocks)"], rows),
        "",
    ]
    matched = [a for a in result.arms if "@" in a]
    if not matched:
        out += ["No token-matched arm in this study: add one (e.g. `A@B`, A trained on B's token budget) for a "
                "compute control that needs no interpolation.", ""]
        return out
    p = result.paired
    for arm in matched:
        for r in p.filter((pl.col("metric") == "exact") & (
                ((pl.col("arm") == "B") & (pl.col("baseline") == arm)) |
                ((pl.col("arm") == arm) & (pl.col("baseline") == "B")))).to_dicts():
            out += [f"Compute control: {r['arm']} − {r['baseline']} in final exact accuracy {_diff(r)} over "
                    f"{r['pairs']} pairs ({arm} trains on B's token budget, so this difference is not one of compute).",
                    ""]
    return out


def _paired_section(result: StudyResult) -> list[str]:
    paired = result.paired.with_columns(families.family(result.analysis, SIGN_FLIP)) if result.paired.height else None
    rows = [
        [f"{r['arm']} − {r['baseline']}" + (" (primary)" if r["family"] == "primary" else ""),
         METRIC_LABELS[r["metric"]], r["family"], str(r["pairs"]), _diff(r), _p(r["p_value"], r["p_exact"])]
        for r in (paired.to_dicts() if paired is not None else [])
    ]
    header = ["comparison", "metric", "family", "pairs", "mean difference [95% CI]", "p"]
    body = _table(header, rows) if rows else "Only one arm: nothing to compare."
    note = ("arm − baseline on units matched by (seed, order); two-sided sign-flip p-value, unadjusted (p (Holm), "
            "within the secondary family only, is in the next section and paired.csv).")
    return ["## Paired differences", "", note, "", body, ""]


def _evidence_section(result: StudyResult) -> list[str]:
    """Pooled vs macro accuracy, item-level tests (Holm-adjusted), baselines, strata, factorial."""
    from trajhpc.results.stats import smallest_sign_flip_p
    from trajhpc.results.itemtables import ITEM_TEST, MCNEMAR_TEST

    out = ["## Example-level evidence", ""]
    rows = [[arm, *(_ci(_lookup(result.summary, arm, m)) for m in ("exact_pooled", "exact_macro", "name_pooled",
                                                                   "name_macro")),
             *ceiling_cells(result.ceiling, result.units, arm)] for arm in result.arms]
    out += ["Final accuracy pooled over held-out examples (each example counts once) and as the mean over "
            "blocks (each block counts once; the `exact`/`name` of the other tables), beside the pooled ceiling.", "",
            _table(["arm", "exact, pooled", "exact, block mean", "name, pooled", "name, block mean", "exact ceiling",
                    "name ceiling"], rows), ""]
    paired = paired_table(result)
    if paired.height:
        lines = []
        # The declared families and the exact/name rows; the rest: paired.csv.
        shown = paired.filter(pl.col("metric").is_in(["exact", "name"]) | (pl.col("family") != "exploratory"))
        for r in shown.sort(families.family_rank(), maintain_order=True).to_dicts():
            kind = r["p_kind"] + (f", {r['draws']} draws" if r.get("draws") else "")
            size = f"{r['pairs']} units" + (f" x {r['items']} items" if r.get("items") else "")
            size += f" in {r['dialogues']} dialogues" if r.get("dialogues") else ""
            lines.append([f"{r['arm']} − {r['baseline']}" + (" (primary)" if r["primary"] else ""),
                          METRIC_LABELS.get(r["metric"], r["metric"]), r["test"], r["family"], size, _diff(r),
                          f"{_num(r['p_value'], 4)} ({kind})", _num(r["p_holm"], 4)])
        pairs = int(result.paired["pairs"].max() or 0) if result.paired.height else 0
        out += ["Every comparison: sign-flip over (seed, order) units; then, over the held-out items, "
                f"`{ITEM_TEST}`: each item's difference averaged over the units both arms share, a sign-flip "
                "test that flips the items of one dialogue together and a CI that resamples dialogues, so "
                "units repeating the same predictions add no evidence; last, "
                f"`{MCNEMAR_TEST}`, an exact McNemar test stratified by unit, which counts every item once per "
                "unit and holds only conditional on the units. "
                f"{_primary_sentence(result, paired)} {_families_sentence(result, paired)} With {pairs} "
                f"pairs the smallest sign-flip p is {smallest_sign_flip_p(pairs):.4g}.", "",
                _table(["comparison", "metric", "test", "family", "n", "difference [95% CI]", "p", "p (Holm)"], lines),
                ""]
    if result.baselines.height:
        pooled = result.baselines.filter(pl.col("block") == "all")
        rows = []
        for name in pooled["baseline"].unique(maintain_order=True).to_list():
            sub = {m: v for m, v in pooled.filter(pl.col("baseline") == name).select("metric", "value").iter_rows()}
            n = pooled.filter(pl.col("baseline") == name)["n"][0]
            rows.append([name, _num(sub.get("exact")), _num(sub.get("name")), str(n)])
        out += ["## Baselines", "", "Predictions from the data alone, scored like the model's (baselines.csv "
                "has them per block).", "", _table(["baseline", "exact", "name", "held-out examples"], rows), ""]
    if result.strata.height:
        rows = [[r["arm"], r["stratum"], METRIC_LABELS.get(r["metric"], r["metric"]), _num(r["value"]), str(r["n"])]
                for r in result.strata.to_dicts()]
        out += ["## Strata", "", "Final accuracy by what the prompt already carries of the gold call "
                "(items pooled over the arm's units).", "", _table(["arm", "stratum", "metric", "value", "n"], rows), ""]
    if result.factorial.height:
        rows = [[r["family"], r["effect"], r["metric"],
                 _ci({"mean": r["estimate"], "ci_lo": r["ci_low"], "ci_hi": r["ci_high"]}),
                 f"{_num(r['p_value'], 4)} ({r['p_kind']})", str(r["n"])] for r in result.factorial.to_dicts()]
        out += ["## Factorial: position x content, calls x responses", "", "position: A-slots − A (knowing the "
                "step), content: B − A-slots (the trajectory's content once the step is known), on units present "
                "in A, A-slots and B; main effects of keeping the earlier calls and the earlier responses, and "
                "their interaction, on units present in A, calls-only, responses-only and B (family: without "
                "tool documentation, or with it).", "",
                _table(["family", "effect", "metric", "estimate [95% CI]", "p", "units"], rows), ""]
    out += [f"Note: {n}" for n in result.notes]
    return out


def _primary_sentence(result: StudyResult, paired: pl.DataFrame) -> str:
    """What the primary comparison is, where it was declared, and whether the study has it."""
    p = result.primary
    metric = METRIC_LABELS[p.metric]
    what = f"{p.label} in {metric}" if "@" in metric else f"{p.label} in final {metric} accuracy"
    where = "declared in the manifest's `analysis.primary`" if result.primary_declared else (
        "the default; a manifest's `analysis.primary` declares another")
    if not paired.filter(pl.col("primary")).height:
        return f"The primary comparison, {what} ({where}), is not in this study: it lacks arm {p.arm} or {p.baseline}."
    return f"The primary comparison, {what} ({where}), sign-flip over units, is not adjusted."


def _families_sentence(result: StudyResult, paired: pl.DataFrame) -> str:
    """Holm's family (the declared secondary rows), the exploratory rest, and whether they were pre-registered."""
    n = paired.filter(pl.col("family") == "secondary").height
    if result.secondary:
        declared = "; ".join(f"{s.label} in {METRIC_LABELS[s.metric]}, {s.test}" for s in result.secondary)
        holm = (f"Holm adjusts within the secondary family only: the {_count(n, 'row')} of paired.csv that the "
                f"manifest's `analysis.secondary` declares ({declared}).")
    else:
        holm = "No secondary comparison is declared (the manifest's `analysis.secondary`), so Holm adjusts nothing."
    if result.analysis_changed:
        registered = "This analysis changed after submission: see the top of this report."
    elif result.recorded_analyses:
        registered = "These families are the ones recorded when the jobs were submitted."
    else:
        registered = "No job recorded an analysis when it was submitted, so these families are not pre-registered."
    return (f"{holm} Every other row is exploratory: its p is unadjusted and its p (Holm) is left empty, "
            f"a lead rather than a finding. {registered}")


def _analysis_changed_section(result: StudyResult) -> list[str]:
    """The label an analysis changed after submission gets, with each version side by side."""
    if not result.analysis_changed:
        return []
    rows = [list(v) for v in families.versions(result)]
    found = "" if result.manifest else (
        " No manifest of this study was found, so this report applies the default analysis: name the manifest "
        "as the target of `trajhpc aggregate`.")
    return [
        "## Analysis changed after submission", "",
        "The analysis this report applies is not the one `trajhpc submit` recorded in the jobs' submission.json: "
        "its primary and secondary comparisons were declared or changed after the jobs were submitted, so its "
        f"families are not pre-registered.{found} Each version (secondary: comparison, metric (test)):", "",
        _table(["version", "jobs", "sha256", "primary", "secondary"], rows), "",
    ]


def render_markdown(result: StudyResult, figures: Sequence[str] = ()) -> str:
    """report.md for one study: methods, exclusions, accuracy, continual metrics, compute, paired tests."""
    out = [f"# Study `{result.study}`", "", *_analysis_changed_section(result)]
    if result.units.height == 0:
        out += ["No complete job: nothing to compare yet.", "", *_excluded_section(result.jobs)]
        return "\n".join(out).rstrip() + "\n"
    out += ["## Methods", "", methods_paragraph(result), ""]
    out += _excluded_section(result.jobs)
    out += _accuracy_section(result)
    out += _continual_section(result)
    out += _compute_section(result)
    out += _paired_section(result)
    out += traineval.markdown_section(result.train_eval, result.train_eval_paired)
    out += _evidence_section(result)
    if figures:
        out += ["## Plots", ""]
        for f in figures:
            caption = PLOT_CAPTIONS.get(f)
            out += [*([f"*{caption}*", ""] if caption else []), f"![{Path(f).stem.replace('_', ' ')}]({f})", ""]
    return "\n".join(out).rstrip() + "\n"


# ---------------------------------------------------------------- terminal


MAX_EXCLUDED_LINES = 20


def excluded_lines(bad: pl.DataFrame, limit: int = MAX_EXCLUDED_LINES) -> list[str]:
    """``    <job id>  <status>: <reason>`` per excluded job, the first ``limit``, then ``… and N more``."""
    bad = bad.sort("status", "job_id")
    lines = [f"    {r['job_id']}  {r['status']}: {r['reason'] or ''}" for r in bad.head(limit).to_dicts()]
    if bad.height > limit:
        lines.append(f"    … and {bad.height - limit} more (see jobs.csv)")
    return lines


def _fit(title: str, heads: Sequence[tuple[str, int | None]], rows: Sequence[Sequence[str]], width: int,
         fold: Sequence[str] = ()):
    """A terminal table no wider than ``width``: (header, keep) per column, None never dropped
    (trajhpc.core.termtable); numbers right-aligned, ``fold`` columns wrap."""
    from trajhpc.core.termtable import Col, fit_table

    cols = [
        Col(head, [row[i] for row in rows], keep=keep, fold=head in fold, fold_min=12,
            justify="left" if i == 0 or head in fold else "right")
        for i, (head, keep) in enumerate(heads)
    ]
    return fit_table(cols, width, title=title)


def print_summary(console: Any, result: StudyResult, out: Path | None = None) -> None:
    """Tables that fit the console: final accuracy, BWT, tokens per arm; paired differences; exclusions."""
    jobs = result.jobs
    bad = jobs.filter(pl.col("status") != "ok")
    console.print(f"[bold]study {result.study}[/]: {jobs.height - bad.height} complete jobs, {bad.height} excluded")
    if result.analysis_changed:
        console.print("  [yellow]analysis changed after submission[/]: report.md shows the recorded and applied versions")
    for status, n in bad.group_by("status").len().sort("status").rows():
        console.print(f"  {n} {status}")
    for line in excluded_lines(bad):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    if result.units.height:
        s = result.summary
        # Two narrow tables rather than one wide one; at 80 columns the low-value columns go (the caption says which).
        rows = [
            [arm, str(_lookup(s, arm, "exact").get("n", 0)),
             *(_ci(_lookup(s, arm, m)) for m in ("exact", "name", "name_excl_toolsearcher", "bwt_exact"))]
            for arm in result.arms
        ]
        heads = [("arm", None), ("units", 30), ("exact", None), ("API name", 60), ("API name excl.\nToolSearcher", 40),
                 ("BWT exact", 20)]
        console.print(_fit(f"{result.study}: final accuracy, mean [95% CI]", heads, rows, console.width))
        rows = []
        for arm in result.arms:
            sup, tot = _lookup(s, arm, "supervised_tokens"), _lookup(s, arm, "total_tokens")
            rows.append([
                arm, _int(sup.get("mean")), _num(sup.get("ratio_vs_A")), _int(tot.get("mean")),
                _num(tot.get("ratio_vs_A")), _ci(_lookup(s, arm, "exact_at_budget_total")),
            ])
        heads = [("arm", None), ("supervised", 50), ("vs A", 40), ("total", 50), ("vs A", 40), ("exact @ total budget", None)]
        console.print(_fit(f"{result.study}: compute, mean tokens per unit", heads, rows, console.width))
        shown = ["exact", "exact_at_budget_supervised", "exact_at_budget_total"]
        paired = result.paired.filter(pl.col("metric").is_in(shown))
        if paired.height:
            rows = [[f"{r['arm']} − {r['baseline']}", METRIC_LABELS[r["metric"]], str(r["pairs"]), _diff(r),
                     _p(r["p_value"], r["p_exact"])] for r in paired.to_dicts()]
            heads = [("comparison", None), ("metric", None), ("pairs", 30), ("mean [95% CI]", None), ("p", None)]
            console.print(_fit("paired differences (matched on seed, order)", heads, rows, console.width,
                               fold=("comparison", "metric")))
    if out is not None:
        console.print(f"wrote {out}")
