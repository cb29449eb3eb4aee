"""`trajhpc power`: the sign-flip power over units, the item-level power and SE, the command."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import synthetic_jobs as sj  # noqa: E402

from trajhpc.core.errors import TrajhpcError
from trajhpc.jobdir.paths import JobDir
from trajhpc.results import itemstats, stats
from trajhpc.results import power as pw

DRAWS = 1_000  # the unit tests' own simulations; the README's numbers use the command's DRAWS


def _trajhpc(*args):
    env = {**os.environ, "COLUMNS": "80"}
    return subprocess.run(
        [sys.executable, "-m", "trajhpc.cli", "power", *args], capture_output=True, text=True, timeout=120, env=env
    )


# ---------------------------------------------------------------- the sign-flip test over units


@pytest.mark.parametrize("n", range(1, 17))
def test_exact_pvalues_counted_in_the_middle_equal_stats(n):
    rng = np.random.default_rng(n)
    d = np.hstack([
        rng.standard_normal((n, 40)) + 0.5,
        rng.integers(-2, 3, (n, 20)).astype(float) / 20,  # ties, as accuracies on a few items give
        np.zeros((n, 1)), np.ones((n, 1)),
    ])
    expected, exact = stats.sign_flip_pvalue(d)
    assert exact
    np.testing.assert_array_equal(pw.exact_sign_flip_pvalues(d), expected)


def test_monte_carlo_pvalues_are_stats_own():
    d = np.random.default_rng(3).standard_normal((20, 30)) + 0.3
    expected = [stats.sign_flip_pvalue(d[:, j])[0] for j in range(d.shape[1])]
    np.testing.assert_array_equal(pw.sign_flip_pvalues(d), expected)


def test_five_units_or_fewer_cannot_reach_005():
    assert stats.smallest_sign_flip_p(5) == 2 / 32 > 0.05 and stats.smallest_sign_flip_p(6) == 2 / 64 < 0.05
    sim = pw.SignFlipPower(unit_sd=10.0, draws=DRAWS)
    assert sim(1000.0, 4) == sim(1000.0, 5) == 0.0  # however large the effect
    assert sim(1000.0, 6) == 1.0


def test_power_grows_with_units():
    sim = pw.SignFlipPower(unit_sd=10.0, draws=DRAWS)
    powers = [sim(7.7, n) for n in range(4, 41, 4)]
    assert powers[0] == 0.0 and powers[-1] > 0.99
    # The same draws serve every n, so the curve does not jitter down.
    assert all(b >= a - 0.01 for a, b in zip(powers, powers[1:])), powers


def test_ninety_percent_power_for_77_points_at_sd_10_needs_about_20_units():
    sim = pw.SignFlipPower(unit_sd=10.0, draws=DRAWS)
    grid = range(4, 41, 4)
    fewest = pw.min_units(lambda n: sim(7.7, n), grid, [sim(7.7, n) for n in grid], 0.9)
    assert 16 <= fewest <= 24
    assert sim(7.7, fewest) >= 0.9 > sim(7.7, fewest - 1)


def test_min_units_bisects_between_grid_points():
    power = {n: n / 10 for n in range(0, 11)}.get  # power = n / 10
    assert pw.min_units(power, [4, 8], [0.4, 0.8], 0.6) == 6
    assert pw.min_units(power, [4, 8], [0.4, 0.8], 0.3) == 3
    assert pw.min_units(power, [4, 8], [0.4, 0.8], 0.9) is None


def test_detectable_effect_has_the_target_power():
    sim = pw.SignFlipPower(unit_sd=10.0, draws=DRAWS)
    effect = pw.detectable_effect(lambda e: sim(e, 20), 0.8, pw.normal_guess(10.0, 20, 0.8, 0.05))
    assert 5 < effect < 8
    assert sim(effect, 20) == pytest.approx(0.8, abs=0.03)
    assert pw.detectable_effect(lambda e: 0.0, 0.8, 1.0) is None  # never detected


# ---------------------------------------------------------------- the item-level test


def _brute_force_item_power(effect, discordance, items, alpha=0.05):
    """Every (discordant k, favouring w) with its probability, rejected by itemstats' own McNemar."""
    q = 0.5 * (1 + effect / 100 / discordance)
    total = 0.0
    for k in range(items + 1):
        p_k = math.comb(items, k) * discordance**k * (1 - discordance) ** (items - k)
        for w in range(k + 1):
            if itemstats.mcnemar_exact(w, k - w) <= alpha:
                total += p_k * math.comb(k, w) * q**w * (1 - q) ** (k - w)
    return total


@pytest.mark.parametrize("effect, discordance, items", [(7.7, 0.3, 40), (10.0, 0.2, 25), (0.0, 0.5, 30), (30, 0.3, 12)])
def test_item_power_is_the_exact_mcnemar_power(effect, discordance, items):
    assert pw.item_power(effect, discordance, items) == pytest.approx(_brute_force_item_power(effect, discordance, items))


def test_item_power_does_not_exceed_alpha_without_an_effect_and_grows_with_items():
    assert pw.item_power(0.0, 0.3, 208) <= 0.05
    assert pw.item_power(7.7, 0.3, 208) < pw.item_power(7.7, 0.3, 800) < pw.item_power(7.7, 0.3, 2000)
    assert pw.item_power(7.7, 0.3, 208) == pytest.approx(0.48, abs=0.01)


def test_item_se_by_hand():
    # A per-item difference is +1 or -1 on discordant items, 0 elsewhere: variance 0.30 - 0.077^2.
    assert pw.item_se(7.7, 0.30, 208) == pytest.approx(100 * math.sqrt((0.30 - 0.077**2) / 208))
    assert pw.item_se(7.7, 0.30, 208) == pytest.approx(3.760, abs=5e-4)
    assert pw.item_se(0.0, 0.30, 208) == pytest.approx(100 * math.sqrt(0.30) / math.sqrt(208))  # 3.80


def test_item_detectable_effect_has_the_target_power():
    effect = pw.item_detectable_effect(0.3, 208, 0.8)
    assert pw.item_power(effect, 0.3, 208) >= 0.8 > pw.item_power(effect - 0.01, 0.3, 208)
    assert pw.item_detectable_effect(0.01, 20, 0.8) is None  # 1% discordant of 20 items: hardly any evidence


def test_assumptions_that_cannot_hold_are_one_line_errors():
    with pytest.raises(TrajhpcError, match="discordant"):
        pw.Assumptions(effect=40, discordance=0.3).check()
    with pytest.raises(TrajhpcError, match="--unit-sd"):
        pw.Assumptions(unit_sd=-1).check()
    run = _trajhpc("--effect", "40", "--discordance", "0.3")
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 2 and len(lines) == 1 and "discordant" in lines[0], run.stderr


# ---------------------------------------------------------------- the command


def test_command_prints_the_table_for_assumed_values():
    run = _trajhpc("--effect", "20", "--unit-sd", "10", "--max-units", "12", "--units", "12")
    assert run.returncode == 0, run.stderr
    expected = pw.plan(pw.Assumptions(effect=20.0), max_units=12, detect_units=12)
    out = run.stdout
    assert "assumed: discordance 0.30, 208 items" in out and "given: effect 20.0 points, unit SD 10.0 points" in out
    rows = [line for line in out.splitlines() if line.startswith("│")]
    cells = [[c.strip() for c in row.strip("│").split("│")] for row in rows]
    assert [c[0] for c in cells] == ["4", "8", "12"]
    assert [c[1] for c in cells] == ["0.125", "0.008", "<0.001"]  # the smallest p: none at 4 units
    assert [c[2] for c in cells] == [pw._power(x) for x in expected.unit_power]
    assert {c[3] for c in cells} == {pw._power(expected.item_power)}
    for line in pw.summary_lines(expected):
        assert line in out
    assert max(len(line) for line in out.splitlines()) <= 80


def _write_predictions(job_dir: Path, n_stages: int, right: list[bool]) -> None:
    path = JobDir(job_dir).predictions(n_stages)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"item": f"lv3.json#{i}", "block": "a", "dialogue_key": f"d{i}", "step": 0, "exact": r, "name": r}
            for i, r in enumerate(right)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture()
def study_with_predictions(tmp_path):
    """The synthetic study (A, B, A@B x seeds 0-2 x two orders), each job right on some of 20 items:
    A on the first 8, B on the first 10 + seed, A@B on the first 9."""
    dirs = sj.write_study(tmp_path, "s1")
    for job_dir in dirs:
        spec = json.loads((job_dir / "spec.json").read_text())
        arm = "A@B" if spec.get("token_budget") else spec["condition"]
        first = {"A": 8, "B": 10 + spec["seed"], "A@B": 9}[arm]
        _write_predictions(job_dir, len(spec["order"]), [i < first for i in range(20)])
    return tmp_path


def test_study_estimates_come_from_the_primary_comparison_and_the_predictions(study_with_predictions):
    from trajhpc.results.aggregate import aggregate

    (result,) = aggregate([study_with_predictions], resamples=200)
    from trajhpc.results.jobrecords import collect_jobs, read_items

    est = pw.study_estimates(result, read_items(collect_jobs([study_with_predictions]))[0])
    b_vs_a = result.paired.filter((pl.col("arm") == "B") & (pl.col("baseline") == "A") & (pl.col("metric") == "exact"))
    assert (est.comparison, est.pairs) == ("B − A in exact", 6)
    assert est.effect == pytest.approx(100 * b_vs_a["mean_diff"].item())
    assert est.unit_sd == pytest.approx(100 * b_vs_a["sd"].item())
    # B is right on 10, 11, 12 items where A is right on 8: 2, 3, 4 discordant of 20, same for both orders.
    assert est.discordance == pytest.approx((2 + 3 + 4) / 3 / 20) and est.items == 20


def test_assumptions_prefer_the_command_line_then_the_study_then_the_defaults():
    est = pw.StudyEstimates("s", "B − A in exact", 6, 5.0, 2.0, None, None)
    a, sources = pw.assumptions_from({"effect": 3.0}, est)
    assert (a.effect, a.unit_sd, a.discordance, a.items) == (3.0, 2.0, 0.30, 208)
    assert sources == {"effect": "given", "unit_sd": "estimated", "discordance": "assumed", "items": "assumed"}


def test_command_reads_a_finished_study(study_with_predictions):
    run = _trajhpc(str(study_with_predictions), "--max-units", "8")
    assert run.returncode == 0, run.stderr
    assert "study s1: B − A in exact, 6 pairs" in run.stdout
    assert "estimated: effect" in run.stdout and "discordance 0.15, 20 items" in run.stdout
    assert "smallest effect at 6 units" in run.stdout  # the study's own pairs
