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
from trajhpc.results.computereport import compute_section
from trajhpc.results.continual import CONTINUAL_METRICS
from trajhpc.results.mdformat import (  # noqa: F401
    METRIC_LABELS,
    _cell,
    _ci,
    _count,
    _diff,
    _int,
    _lookup,
    _num,
    _p,
    _sci,
    _table,
)
from trajhpc.results.paperframes import headline_sentence, headline_table
from trajhpc.results.studyresult import StudyResult
from trajhpc.results.tables import paired_table
from trajhpc.study.comparison import SIGN_FLIP

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
    "rmatrix.png": "R[stage][block] by position: column k is the block each unit trained k-th; exact accuracy "
                   "(top row) and API-name accuracy (second row), the stage that trained each block outlined; "
                   "where the jobs scored it (eval.gold_likelihood), a third row of teacher-forced gold-token "
                   "accuracy on its own colour scale.",
    "rmatrix_by_block.png": "R[stage][block] by domain: each block's exact accuracy (top row) and API-name "
                            "accuracy (second row) after each stage, mean over seeds and orders, the stages "
                            "that trained it outlined; where the jobs scored it (eval.gold_likelihood), a third "
                            "row of teacher-forced gold-token accuracy on its own colour scale.",
    "paired_forest.png": "Paired differences with 95% CIs; the primary comparison is marked.",
    "loss_curves.png": "Training loss per optimizer step, mean over units, stages marked.",
}


def curve_of(stages: pl.DataFrame, arm: str, metric: str) -> pl.DataFrame:
    """One arm's per-stage estimates of one metric, by stage."""
    return stages.filter((pl.col("arm") == arm) & (pl.col("metric") == metric)).sort("stage")


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
    pairs = result.paired.filter(pl.col("metric") == "exact")["pairs"].to_list()
    pair_text = (f"{_count(len(pairs), 'pair')} of arms, each over {min(pairs)}"
                 + (f" to {max(pairs)}" if max(pairs) != min(pairs) else "") + " matched units; paired.csv lists them"
                 if pairs else "no pair of arms")
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
            f"Paired differences match units on (seed, order) ({pair_text}); p-values are two-sided "
            "sign-flip permutation tests, exact when 2^pairs ≤ 100,000, otherwise Monte Carlo (MC) with "
            f"{result.resamples:,} draws (seed {result.seed}).",
            "Continual-learning metrics use each unit's accuracy matrix R[stage][block] (b_i = the i-th trained "
            "block, T = the last stage): BWT = mean over i<T of R[T][b_i] − R[i][b_i]; forgetting (Chaudhry) = "
            "mean over i<T of max_{1≤l<T} R[l][b_i] − R[T][b_i], as Chaudhry et al. (2018) define it; forgetting "
            "(since learned) = mean over i<T of max_{i≤l<T} R[l][b_i] − R[T][b_i], which leaves out scores "
            "reached before the block was trained; FWT = mean over i≥2 of R[i−1][b_i] − R[0][b_i], against "
            "stage 0, the untrained (zero-shot) model, not a randomly initialised one as in Lopez-Paz & "
            "Ranzato (2017).",
            "Exploratory only (compute.csv): each unit's mean exact accuracy interpolated linearly between stages "
            "along its cumulative tokens (stage 0 at 0) at the smallest final count of any unit, "
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


def one_stage_arms(result: StudyResult) -> set[str]:
    """Arms trained in one stage (curriculum joint): no earlier stage to forget or transfer from, so
    BWT, forgetting and FWT are not applicable there (shown as n/a, never 0)."""
    units = result.units
    return set(units.group_by("arm").agg(pl.col("n_stages").max()).filter(pl.col("n_stages") < 2)["arm"])


def scored_gold(summary: pl.DataFrame) -> bool:
    """Whether some unit has a teacher-forced gold-token score (eval.gold_likelihood)."""
    gold = summary.filter(pl.col("metric") == "gold_token_acc") if "metric" in summary.columns else summary
    return gold.height > 0 and (gold["n"] > 0).any()


def _continual_section(result: StudyResult) -> list[str]:
    s = result.summary
    gold = scored_gold(s)
    scores = {"exact": "exact", "name": "name", **({"gold_token_acc": "gold-token"} if gold else {})}
    metrics = [f"{m}_{score}" for score in scores for m in CONTINUAL_METRICS]
    one_stage = one_stage_arms(result)
    rows = [[arm, *("n/a" if arm in one_stage else _ci(_lookup(s, arm, m)) for m in metrics)] for arm in result.arms]
    names = {"bwt": "BWT", "forgetting_chaudhry": "forgetting (Chaudhry)",
             "forgetting_since_learned": "forgetting (since learned)", "fwt": "FWT"}
    header = ["arm", *(f"{names[m]} {word}" for word in scores.values() for m in CONTINUAL_METRICS)]
    note = ([f"n/a: {', '.join(sorted(one_stage))} trained every block in one stage (curriculum joint), so no block "
             "has a later stage to be forgotten in or an earlier one to transfer from.", ""] if one_stage else [])
    if gold:
        note += ["gold-token: the same metrics on teacher-forced gold-token accuracy (eval.gold_likelihood: the "
                 "fraction of the gold call's tokens that are the model's top choice after the true prefix), "
                 "a score that moves where generated calls do not.", ""]
    out = ["## Continual learning", "", _table(header, rows), "", *note]
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


def _paired_section(result: StudyResult) -> list[str]:
    paired = result.paired.with_columns(families.family(result.analysis, SIGN_FLIP)) if result.paired.height else None
    if paired is not None:  # the interpolated exact @ budget is exploratory: in paired.csv, here only when declared
        paired = paired.filter(~pl.col("metric").str.starts_with("exact_at_budget") | (pl.col("family") != "exploratory"))
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
    from trajhpc.results.itemtables import ITEM_TEST, MCNEMAR_TEST
    from trajhpc.results.stats import smallest_sign_flip_p

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
    # The answer first: the primary comparison in one sentence, then the arms at a glance.
    headline = headline_table(result)
    out += [headline_sentence(result), "", _table(headline.frame.columns, headline.frame.rows()), "",
            f"*{headline.note}*", ""]
    out += ["## Methods", "", methods_paragraph(result), ""]
    out += _excluded_section(result.jobs)
    out += _accuracy_section(result)
    out += _continual_section(result)
    out += compute_section(result)
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
        one_stage = one_stage_arms(result)
        rows = [
            [arm, str(_lookup(s, arm, "exact").get("n", 0)),
             *(_ci(_lookup(s, arm, m)) for m in ("exact", "name", "name_excl_toolsearcher")),
             "n/a" if arm in one_stage else _ci(_lookup(s, arm, "bwt_exact"))]
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
                _num(tot.get("ratio_vs_A")), _sci(_lookup(s, arm, "flops").get("mean")),
            ])
        heads = [("arm", None), ("supervised", 50), ("vs A", 40), ("total", 50), ("vs A", 40), ("FLOPs", None)]
        console.print(_fit(f"{result.study}: compute, mean tokens per unit", heads, rows, console.width))
        shown = ["exact"]
        paired = result.paired.filter(pl.col("metric").is_in(shown))
        if paired.height:
            rows = [[f"{r['arm']} − {r['baseline']}", METRIC_LABELS[r["metric"]], str(r["pairs"]), _diff(r),
                     _p(r["p_value"], r["p_exact"])] for r in paired.to_dicts()]
            heads = [("comparison", None), ("metric", None), ("pairs", 30), ("mean [95% CI]", None), ("p", None)]
            console.print(_fit("paired differences (matched on seed, order)", heads, rows, console.width,
                               fold=("comparison", "metric")))
    if out is not None:
        console.print(f"wrote {out}")
