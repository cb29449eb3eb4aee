"""Manifest loading: the shipped manifests, and every error naming file, line and field path."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO

from trajhpc.core.errors import InputError
from trajhpc.study.grid import expand
from trajhpc.study.manifest import ConditionEntry, RandomOrders, SeedRange, load_manifest, parse_manifest

HEAD = "study: s\nconditions: [A]\n"  # the two required keys, lines 1-2
ABC = "study: s\nconditions: [A, B, calls-only]\n"


# ---------------------------------------------------------------- shipped manifests


def test_grid_manifest_is_the_140_job_study():
    m = load_manifest(REPO / "manifests" / "grid.yaml")
    assert m.model == "meta-llama/Llama-3.1-8B-Instruct" and m.quantization == "nf4"
    assert m.executor == "slurm" and m.container.runtime == "apptainer" and m.container.image == "trajhpc.sif"
    assert (m.resources.gpus_per_node, m.resources.cpus_per_task, m.resources.mem_gb) == (1, 8, 64)
    assert (m.resources.timeout_min, m.resources.array_parallelism) == (480, 20)
    assert (m.lora.r, m.lora.alpha, m.train.lr, m.train.epochs) == (16, 32, 2e-4, 2)
    # Token batches of ~16 lv3 examples in one forward (the pilot's batch 8 x accumulation 2).
    assert (m.train.tokens_per_batch, m.train.grad_accum, m.train.max_seq_len) == (6144, 1, 2048)
    assert m.train.gradient_checkpointing == "auto" and m.eval.max_new_tokens == 160
    assert (m.eval.tokens_per_batch, m.eval.backend) == (65536, "merged")
    jobs = expand(m)
    assert len(jobs) == 140
    # A-slots, both compute controls (A@B, B@A) and the continual-learning baselines as curricula of B
    assert sorted({j.spec.arm for j in jobs}) == ["A", "A-slots", "A@B", "B", "B+joint", "B+replay", "B@A"]
    assert {j.spec.seed for j in jobs} == {0, 1, 2, 3, 4}
    assert len({j.spec.order for j in jobs}) == 4
    budget = next(j.spec.token_budget for j in jobs if j.spec.arm == "A@B")
    assert (budget.match, budget.count) == ("B", "total")


def test_smoke_manifest_is_small_and_local():
    m = load_manifest(REPO / "manifests" / "smoke.yaml")
    assert m.model == "tiny" and m.executor == "local"
    # Enough training and held-out items per block that the block just trained visibly improves
    # (issue 21): whole capped blocks for epochs, not a few steps, at a constant lr; few enough that
    # command 1 stays a few minutes on 2 cores; every train setting written out.
    assert m.data.max_train_per_block == 32 and m.data.max_heldout_per_block >= 12
    assert m.train.max_steps is None and 1 <= m.train.epochs <= 4 and m.train.schedule == "constant"
    assert {"epochs", "lr", "schedule", "warmup_ratio", "batch_size", "grad_accum", "max_seq_len"} <= m.train.model_fields_set
    assert m.train.max_seq_len == 512 and m.eval.max_new_tokens == 48
    jobs = expand(m)
    assert len(jobs) == 8
    assert {(j.spec.condition, j.spec.seed) for j in jobs} == {(c, s) for c in "AB" for s in (0, 1)}


def test_smollm2_manifest_is_cpu_fp32():
    m = load_manifest(REPO / "manifests" / "smollm2-cpu.yaml")
    assert (m.model, m.quantization, m.compute_dtype, m.executor) == ("smollm2-135m-instruct", "nf4", "fp32", "local")
    assert m.resources.gpus_per_node == 0
    assert len(expand(m)) == 2


# ---------------------------------------------------------------- accepted forms


def test_condition_seed_and_order_forms():
    m = parse_manifest(
        "study: s\n"
        "conditions:\n"
        "  - A\n"
        "  - {condition: last-k, k: 2}\n"
        "  - {condition: A, token_budget: {match: B, count: total}}\n"
        "seeds: {count: 3, start: 10}\n"
        "orders: {random: 2, seed: 7}\n"
    )
    assert m.conditions[0] == "A"
    assert m.conditions[1] == ConditionEntry(condition="last-k", k=2)
    assert m.conditions[2].token_budget.count == "total"
    assert m.seeds == SeedRange(count=3, start=10)
    assert m.orders == RandomOrders(random=2, seed=7)
    assert m.executor == "auto" and m.run_root == "jobs" and m.container.runtime == "none"


def test_extra_sbatch_false_is_left_out():
    m = parse_manifest(HEAD + "resources: {extra_sbatch: {exclusive: true, hold: false, mail-type: FAIL}}\n")
    assert m.resources.extra_sbatch == {"exclusive": True, "mail-type": "FAIL"}


# sbatch options trajhpc controls or that break requeueing -> what the message points to
RESERVED = [
    ("no-requeue", "resources.max_requeues"), ("requeue", "resources.max_requeues"), ("mem", "resources.mem_gb"),
    ("mem-per-cpu", "resources.mem_gb"), ("mem-per-gpu", "resources.mem_gb"), ("gres", "resources.gpus_per_node"),
    ("gpus", "resources.gpus_per_node"), ("gpus-per-node", "resources.gpus_per_node"),
    ("gpus-per-task", "resources.gpus_per_node"), ("nodes", "one task on one node"), ("ntasks", "one task"),
    ("ntasks-per-node", "one task"), ("export", "submit environment"), ("chdir", "folder trajhpc submit runs in"),
    ("wrap", "trajhpc sets it"), ("parsable", "trajhpc sets it"), ("signal", "resources.signal_delay_s"),
    ("time", "resources.timeout_min"),
]


@pytest.mark.parametrize("option, hint", RESERVED)
def test_extra_sbatch_refuses_options_trajhpc_controls(option, hint):
    with pytest.raises(InputError) as err:
        parse_manifest(HEAD + f"resources:\n  extra_sbatch:\n    {option}: 1\n", "m.yaml")
    message = str(err.value)
    assert message.startswith(f"m.yaml:5: resources.extra_sbatch.{option}: sbatch option {option!r} cannot be set here")
    assert hint in message


def test_extra_sbatch_refuses_abbreviations_of_reserved_options():
    with pytest.raises(InputError, match=r"'no-req' abbreviates 'no-requeue'.*resources\.max_requeues"):
        parse_manifest(HEAD + "resources: {extra_sbatch: {no-req: true}}\n")
    assert parse_manifest(HEAD + "resources: {extra_sbatch: {nodelist: n1, gpu-bind: closest}}\n")


def test_signal_delay_must_fit_in_the_time_limit():
    with pytest.raises(InputError) as err:
        parse_manifest(HEAD + "resources:\n  timeout_min: 2\n  signal_delay_s: 120\n", "m.yaml")
    assert str(err.value).startswith(
        "m.yaml:5: resources.signal_delay_s: resources.signal_delay_s (120 s) must be less than "
        "resources.timeout_min (2 min = 120 s)"
    )
    with pytest.raises(InputError, match=r"m\.yaml:3: resources\.signal_delay_s: .*\(90 s\).*timeout_min \(1 min"):
        parse_manifest(HEAD + "resources: {timeout_min: 1}\n", "m.yaml")  # the default delay
    assert parse_manifest(HEAD + "resources: {timeout_min: 1, signal_delay_s: 59}\n").resources.signal_delay_s == 59


def test_docker_only_bind_options_are_refused_for_apptainer():
    binds = "  binds: [/a, \"/b:/b:ro,Z\"]\n"
    with pytest.raises(InputError) as err:
        parse_manifest(HEAD + "container:\n  runtime: apptainer\n  image: t.sif\n" + binds, "m.yaml")
    assert str(err.value) == (
        "m.yaml:6: container.binds.1: bind '/b:/b:ro,Z': option Z is Docker's (SELinux relabelling); "
        "apptainer accepts ro or rw"
    )
    assert parse_manifest(HEAD + "container:\n  runtime: docker\n  image: t:1\n" + binds).container.binds[1] == "/b:/b:ro,Z"


def test_container_image_may_use_variables_and_home():
    m = parse_manifest(HEAD + "container: {runtime: apptainer, image: \"${SCRATCH}/images/t.sif\"}\n")
    assert m.container.image == "${SCRATCH}/images/t.sif"  # expanded by trajhpc submit, not here
    assert parse_manifest(HEAD + "container: {runtime: apptainer, image: ~/t.sif}\n").container.image == "~/t.sif"
    with pytest.raises(InputError, match="container.image: image .* is not a file path"):
        parse_manifest(HEAD + "container: {runtime: apptainer, image: \"$(id).sif\"}\n")


def test_conditions_whose_arms_would_collide_are_refused(monkeypatch):
    from trajhpc.spec import JobSpec, TokenBudget

    text = (
        "study: s\nconditions:\n  - {condition: A, token_budget: {match: B, count: supervised}}\n"
        "  - {condition: A, token_budget: {match: B, count: total}}\n"
    )
    supervised, total = (
        JobSpec(condition="A", order=("x",), token_budget=TokenBudget(match="B", count=c)).arm
        for c in ("supervised", "total")
    )
    if supervised == total:  # the arm name does not tell the budgets apart: aggregate would merge them
        with pytest.raises(InputError, match=r"m\.yaml:4: conditions\.1: this entry's arm 'A@B' is also the arm of conditions\.0"):
            parse_manifest(text, "m.yaml")
    else:
        assert len(parse_manifest(text, "m.yaml").conditions) == 2
    # Whatever JobSpec.arm calls them, two different entries with one name are refused ...
    monkeypatch.setattr(JobSpec, "arm", property(lambda self: self.condition))
    with pytest.raises(InputError, match=r"m\.yaml:4: conditions\.1: this entry's arm 'A' is also the arm of conditions\.0"):
        parse_manifest("study: s\nconditions:\n  - A\n  - {condition: A, token_budget: {match: B}}\n", "m.yaml")
    # ... and equal entries are the same jobs, not a collision.
    assert parse_manifest("study: s\nconditions: [A, {condition: A}]\n").conditions == ["A", ConditionEntry(condition="A")]


def test_analysis_primary_defaults_to_b_minus_a_and_changes_no_job_id():
    plain = parse_manifest("study: s\nconditions: [A, B, calls-only]\n")
    p = plain.analysis.primary
    assert (p.arm, p.baseline, p.metric) == ("B", "A", "exact") and plain.arms() == ["A", "B", "calls-only"]
    # Unset, the default B - A is not checked against the arms (a study without B keeps working).
    assert parse_manifest("study: s\nconditions: [A, calls-only]\n").analysis.primary.arm == "B"
    declared = parse_manifest(
        "study: s\nconditions: [A, B, calls-only]\nanalysis: {primary: {arm: calls-only, metric: name}}\n"
    )
    p = declared.analysis.primary
    assert (p.arm, p.baseline, p.metric) == ("calls-only", "A", "name")
    assert [j.job_id for j in expand(declared)] == [j.job_id for j in expand(plain)]
    with pytest.raises(InputError, match=r"m\.yaml:3: analysis\.primary: .*both 'A'"):
        parse_manifest(HEAD + "analysis: {primary: {arm: A}}\n", "m.yaml")


def test_analysis_secondary_is_declared_like_the_primary_and_changes_no_job_id():
    plain = parse_manifest(ABC)
    assert plain.analysis.secondary == () and not plain.written("analysis.primary")
    declared = parse_manifest(ABC + "analysis:\n  secondary:\n    - {metric: name}\n"
                              "    - {arm: calls-only, test: item}\n")
    assert [(s.arm, s.baseline, s.metric, s.test) for s in declared.analysis.secondary] == [
        ("B", "A", "name", "sign-flip"), ("calls-only", "A", "exact", "item")]
    assert declared.written("analysis") and not declared.written("analysis.primary")
    assert [j.job_id for j in expand(declared)] == [j.job_id for j in expand(plain)]
    # What submit records: the analysis as the manifest states it, defaults filled.
    assert declared.analysis.document() == {
        "primary": {"arm": "B", "baseline": "A", "metric": "exact"},
        "secondary": [{"arm": "B", "baseline": "A", "metric": "name", "test": "sign-flip"},
                      {"arm": "calls-only", "baseline": "A", "metric": "exact", "test": "item"}],
    }
    # Secondaries alone leave the default primary unchecked: a study without B declares its own.
    alone = parse_manifest("study: s\nconditions: [A, calls-only]\nanalysis: {secondary: [{arm: calls-only}]}\n")
    assert alone.analysis.secondary[0].label == "calls-only − A"


@pytest.mark.parametrize("name", ["grid.yaml", "factorial.yaml", "paper.yaml"])
def test_shipped_studies_declare_their_analysis(name):
    m = load_manifest(REPO / "manifests" / name)
    p = m.analysis.primary
    assert m.written("analysis.primary") and (p.arm, p.baseline, p.metric) == ("B", "A", "exact")
    assert m.analysis.secondary  # Holm's family is declared, not "every other row"
    # A-slots is in every shipped study at scale, compared both ways: position (A-slots − A), content (B − A-slots).
    assert "A-slots" in m.arms()
    assert {("A-slots", "A"), ("B", "A-slots")} <= {(c.arm, c.baseline) for c in m.analysis.secondary}


def test_factorial_and_paper_manifests_add_a_slots_to_their_arms():
    factorial = load_manifest(REPO / "manifests" / "factorial.yaml")
    assert factorial.arms() == ["A", "A-slots", "calls-only", "responses-only", "B", "A+docs-dialogue",
                                "A-slots+docs-dialogue", "calls-only+docs-dialogue", "responses-only+docs-dialogue",
                                "B+docs-dialogue", "B@A"]
    assert len(expand(factorial)) == 22
    paper = load_manifest(REPO / "manifests" / "paper.yaml")
    assert paper.arms() == ["A", "B", "A-slots"] and len(expand(paper)) == 3
    # The pilot's comparison stays the primary; A-slots enters only the declared secondary family.
    assert (paper.analysis.primary.arm, paper.analysis.primary.baseline) == ("B", "A")


# ---------------------------------------------------------------- errors: file, line, field, message

ERRORS = [
    # unknown keys, with the closest valid key suggested
    (HEAD + "train:\n  lrr: 0.1\n", "m.yaml:4: train.lrr: unknown key 'lrr' (did you mean 'lr'?)"),
    (HEAD + "executr: local\n", "m.yaml:3: executr: unknown key 'executr' (did you mean 'executor'?)"),
    (HEAD + "seeds: {cont: 3}\n", "m.yaml:3: seeds.cont: unknown key 'cont' (did you mean 'count'?)"),
    (HEAD + "data:\n  blocks:\n    rulez: []\n", "m.yaml:5: data.blocks.rulez: unknown key 'rulez' (did you mean 'rules'?)"),
    (HEAD + "resources:\n  gpus: 1\n", "m.yaml:4: resources.gpus: unknown key 'gpus' (did you mean 'gpus_per_node'?)"),
    (HEAD + "zzz: 1\n", "m.yaml:3: zzz: unknown key 'zzz'; valid keys: analysis, compute_dtype, conditions, container, data, "
     "eval, executor, lora, max_jobs, model, orders, quantization, resources, run_root, seeds, study, tracking, train"),
    # analysis.primary: arms of this manifest, a paired metric, two different arms
    (HEAD + "analysis: {primary: {arm: C}}\n", "m.yaml:3: analysis.primary.arm: arm 'C' is not an arm of this "
     "manifest; use one of A"),
    (HEAD + "analysis:\n  primary:\n    arm: A\n    baseline: B\n",
     "m.yaml:6: analysis.primary.baseline: baseline 'B' is not an arm of this manifest; use one of A"),
    (HEAD + "analysis:\n  primary:\n    metric: acc\n", "m.yaml:5: analysis.primary.metric: unknown "
     "metric 'acc'; use one of exact, name, name_excl_toolsearcher, exact_at_budget_supervised, exact_at_budget_total, "
     "exact_retrieval"),
    (HEAD + "analysis: {primry: {}}\n", "m.yaml:3: analysis.primry: unknown key 'primry' (did you mean 'primary'?)"),
    # analysis.secondary: each entry checked like the primary, each comparison in one family, one direction per pair
    (ABC + "analysis:\n  secondary:\n    - {arm: C}\n", "m.yaml:5: analysis.secondary.0.arm: arm 'C' is not an arm "
     "of this manifest; use one of A, B, calls-only"),
    (ABC + "analysis:\n  secondary:\n    - {metric: name}\n    - {metric: acc}\n", "m.yaml:6: "
     "analysis.secondary.1.metric: unknown metric 'acc'; use one of exact, name, name_excl_toolsearcher, "
     "exact_at_budget_supervised, exact_at_budget_total, exact_retrieval"),
    (ABC + "analysis:\n  secondary:\n    - {test: mcnemar}\n",
     "m.yaml:5: analysis.secondary.0.test: Input should be 'sign-flip' or 'item'"),
    (ABC + "analysis: {secondary: [{arm: B, scope: x}]}\n", "m.yaml:3: analysis.secondary.0.scope: unknown key "
     "'scope'; valid keys: arm, baseline, metric, test"),
    (ABC + "analysis:\n  secondary:\n    - {arm: B, baseline: B}\n",
     "m.yaml:5: analysis.secondary.0: arm and baseline are both 'B': a comparison needs two arms"),
    (ABC + "analysis:\n  secondary:\n    - {metric: exact}\n", "m.yaml:5: analysis.secondary.0: B − A in exact "
     "(sign-flip) is already analysis.primary: a comparison is in one family"),
    (ABC + "analysis:\n  secondary:\n    - {metric: name}\n    - {metric: name, test: sign-flip}\n",
     "m.yaml:6: analysis.secondary.1: B − A in name (sign-flip) is already analysis.secondary.0: a comparison is "
     "in one family"),
    (ABC + "analysis:\n  secondary:\n    - {arm: A, baseline: B, metric: name}\n", "m.yaml:5: analysis.secondary.0: "
     "A − B is analysis.primary (B − A) the other way round: paired.csv compares two arms in one direction; "
     "write arm: B, baseline: A"),
    (ABC + "analysis:\n  secondary:\n    - {arm: calls-only}\n    - {arm: A, baseline: calls-only, metric: name}\n",
     "m.yaml:6: analysis.secondary.1: A − calls-only is analysis.secondary.0 (calls-only − A) the other way round: "
     "paired.csv compares two arms in one direction; write arm: calls-only, baseline: A"),
    # bad values
    (HEAD + "train:\n  batch_size: 8\n  lr: 0\n", "m.yaml:5: train.lr: Input should be greater than 0"),
    (HEAD + "executor: slurmm\n", "m.yaml:3: executor: Input should be 'slurm', 'local' or 'auto'"),
    ("study: s\nconditions:\n  - A\n  - C\n", "m.yaml:4: conditions.1: unknown condition 'C'; use one of A, A-slots, B, "
     "calls-only, responses-only, or {condition: last-k, k: N}"),
    ("study: s\nconditions:\n  - last-k\n", "m.yaml:3: conditions.0: 'last-k' needs k: write {condition: last-k, k: 2}"),
    ("study: s\nconditions:\n  - {condition: B, k: 2}\n", "m.yaml:3: conditions.0: k is only used by condition last-k"),
    ("study: s\nconditions:\n  - condition: A\n    token_budget: {match: B, count: all}\n",
     "m.yaml:4: conditions.0.token_budget.count: Input should be 'supervised' or 'total'"),
    (HEAD + "seeds: 3\n", "m.yaml:3: seeds: expected a list of seeds like [0, 1, 2] or a mapping like {count: 5, start: 0}"),
    (HEAD + "seeds: {count: 0}\n", "m.yaml:3: seeds.count: Input should be greater than or equal to 1"),
    (HEAD + "orders: latn\n", "m.yaml:3: orders: Input should be 'all' or 'latin'"),
    (HEAD + "orders: {random: 0}\n", "m.yaml:3: orders.random: Input should be greater than or equal to 1"),
    ("study: a b\nconditions: [A]\n", "m.yaml:1: study: must be a simple name: letters, digits, '.', '_' or '-' (it names a folder)"),
    ("conditions: [A]\n", "m.yaml:1: study: required key is missing"),
    ("study: s\nconditions: []\n", "m.yaml:2: conditions: List should have at least 1 item after validation, not 0"),
    # resources: sbatch directives that could break the script
    (HEAD + "resources:\n  extra_sbatch:\n    --mail-user: x\n",
     "m.yaml:5: resources.extra_sbatch.--mail-user: sbatch option '--mail-user' must match [a-z][a-z0-9-]* (no leading '--')"),
    (HEAD + "resources:\n  extra_sbatch:\n    mail-user: \"a\\n#SBATCH --x\"\n",
     "m.yaml:5: resources.extra_sbatch.mail-user: must be one line without control characters"),
    (HEAD + "resources:\n  extra_sbatch:\n    time: 10\n",
     "m.yaml:5: resources.extra_sbatch.time: sbatch option 'time' cannot be set here (use resources.timeout_min)"),
    (HEAD + "resources:\n  extra_sbatch:\n    array: 0-3\n",
     "m.yaml:5: resources.extra_sbatch.array: sbatch option 'array' cannot be set here (trajhpc sets it)"),
    (HEAD + "resources:\n  extra_sbatch:\n    mail-type: [A]\n",
     "m.yaml:5: resources.extra_sbatch.mail-type: expected a string, number or true/false"),
    (HEAD + "resources:\n  partition: \"gpu\\nx\"\n", "m.yaml:4: resources.partition: must be one line without control characters"),
    # container
    (HEAD + "container:\n  runtime: apptainer\n", "m.yaml:3: container: runtime apptainer needs an image"),
    (HEAD + "container:\n  runtime: docker\n  image: --privileged\n",
     "m.yaml:5: container.image: image '--privileged' is not a file path or image reference "
     "(letters, digits and . _ / ~ + : @ = -, not starting with '-')"),
    (HEAD + "container:\n  runtime: apptainer\n  image: x.sif\n  binds:\n    - /data\n    - /a:/b:c:d\n",
     "m.yaml:8: container.binds.1: bind '/a:/b:c:d' has more than src:dst:opts (':' is not allowed inside a path)"),
    (HEAD + "container:\n  runtime: apptainer\n  image: x.sif\n  digest: md5:abc\n",
     "m.yaml:6: container.digest: digest 'md5:abc' must look like sha256:<64 hex digits>"),
    # YAML itself
    (HEAD + "study: t\n", "m.yaml:3: study: duplicate key"),
    ("study: s\nconditions: [A\n", "m.yaml:3: not valid YAML (expected ',' or ']', but got '<stream end>')"),
    ("- a\n- b\n", "m.yaml:1: a manifest must be a YAML mapping (study: ..., conditions: ...)"),
    ("", "m.yaml:1: a manifest must be a YAML mapping (study: ..., conditions: ...)"),
]


@pytest.mark.parametrize("text, message", ERRORS, ids=[m.split(": ")[1] for _, m in ERRORS])
def test_error_names_file_line_and_field(text, message):
    with pytest.raises(InputError) as err:
        parse_manifest(text, "m.yaml")
    assert str(err.value) == message


def test_error_attributes():
    with pytest.raises(InputError) as err:
        parse_manifest(HEAD + "train:\n  lr: -1\n", "x.yaml")
    assert (err.value.file, err.value.line, err.value.field) == ("x.yaml", 4, "train.lr")


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"nope\.yaml: manifest file not found"):
        load_manifest(tmp_path / "nope.yaml")


def test_unknown_block_in_explicit_order_names_the_line():
    m = parse_manifest(HEAD + "orders:\n  - [care-appointments, dentist]\n", "m.yaml")
    with pytest.raises(InputError) as err:
        expand(m)
    assert str(err.value).startswith("m.yaml:4: orders.0.1: unknown block 'dentist'; blocks: care-appointments, ")


def test_repeated_block_in_order():
    m = parse_manifest(HEAD + "orders:\n  - [care-appointments, care-appointments]\n", "m.yaml")
    with pytest.raises(InputError, match=r"m\.yaml:4: orders\.0\.1: block 'care-appointments' appears twice"):
        expand(m)


def test_too_many_random_orders():
    m = parse_manifest(HEAD + "orders: {random: 25}\n", "m.yaml")
    with pytest.raises(InputError, match=r"m\.yaml:3: orders\.random: asks for 25 distinct orders but 4 blocks have only 24"):
        expand(m)


def test_cli_prints_one_line_and_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(HEAD + "train:\n  lrr: 1\n")
    out = subprocess.run(
        [sys.executable, "-m", "trajhpc.cli", "submit", str(bad), "--dry-run"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines == [f"error: {bad}:4: train.lrr: unknown key 'lrr' (did you mean 'lr'?)"], out.stderr
