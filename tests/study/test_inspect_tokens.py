"""`trajhpc data inspect --tokens MODEL`: training tokens under A and B per level (file)
and block, and the B/A ratio of every mix of levels, to choose the mix whose ratio matches
the pilot's 1.251; `--hf` and `--manifest`. Runs on the fixture dataset in a temporary
Hugging Face hub cache (tests/fixtures/hub_api_bank.py), no network."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import hub_api_bank as hub
import pytest
from rich.console import Console

from trajhpc.core.errors import TrajhpcError
from trajhpc.data.source import fingerprint, pin_fingerprint
from trajhpc.data.splits import load_study_data
from trajhpc.data.tokens import count_by_condition_block
from trajhpc.spec import DataSpec, HubSource
from trajhpc.study.inspect import PILOT_RATIO, inspect_command, mix_rows, token_rows

FILES = (hub.LV1, hub.LV2, hub.LV3)
HUB_MANIFEST = f"""data:
  source: {{hf: {hub.REPO}}}
  files: [{", ".join(FILES)}]
"""


def _hub_data() -> DataSpec:
    return DataSpec(source=HubSource(hf=hub.REPO), files=FILES)




def test_token_rows_per_level_and_block_add_up(hub_cache, tiny):
    _, tokenizer = tiny
    data = pin_fingerprint(_hub_data())
    study = load_study_data(data)
    rows = token_rows(study, tokenizer, FILES, max_seq_len=1024)
    levels = ["lv1-api-train", "lv2-api-train", "lv3-api-train"]
    assert [r["level"] for r in rows if r["block"] == "total"] == levels
    totals = [r for r in rows if r["block"] == "total"]
    # Per level, the block rows add up to the total; all levels add up to the study's train split.
    for total in totals:
        cells = [r for r in rows if r["level"] == total["level"] and r["block"] != "total"]
        assert sum(r["A"] for r in cells) == total["A"] and sum(r["examples"] for r in cells) == total["examples"]
    counts = count_by_condition_block(tokenizer, study.train, [("A", None), ("B", None)], max_seq_len=1024)
    for condition in ("A", "B"):
        assert sum(t[condition] for t in totals) == sum(c.total_tokens for c in counts[(condition, None)].values())
    assert sum(t["examples"] for t in totals) == sum(len(v) for v in study.train.values())
    # B keeps the earlier calls and responses, so it is longer wherever there are any.
    assert all(t["B"] > t["A"] for t in totals)


def test_mix_rows_pool_tokens_before_dividing():
    rows = [
        {"level": "x", "block": "total", "A": 100, "B": 150},
        {"level": "y", "block": "total", "A": 300, "B": 330},
        {"level": "z", "block": "total", "A": 100, "B": 100},
    ]
    mixes = {m["mix"]: m["B"] / m["A"] for m in mix_rows(rows)}
    assert mixes == {"x + y": 480 / 400, "x + z": 250 / 200, "y + z": 430 / 400, "x + y + z": 580 / 500}
    many = [{"level": str(i), "block": "total", "A": 1, "B": 2} for i in range(7)]
    assert [m["mix"] for m in mix_rows(many)] == [" + ".join(str(i) for i in range(7))]


def test_inspect_tokens_prints_levels_mixes_and_the_fingerprint(hub_cache):
    console = Console(record=True, width=160, color_system=None)
    inspect_command(
        console, source=None, files=list(FILES), blocks=None, heldout_fraction=None, hf=hub.REPO, tokens="tiny"
    )
    text = console.export_text()
    assert f"fingerprint {fingerprint(_hub_data())}" in text
    for level in ("lv1-api-train", "lv2-api-train", "lv3-api-train"):
        assert level in text
    assert f"the pilot: B/A {PILOT_RATIO}" in text
    assert "lv1-api-train + lv2-api-train + lv3-api-train" in text


def test_inspect_manifest_reads_the_data_settings(hub_cache, tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(
        f"study: s\nconditions: [A]\n{HUB_MANIFEST}train: {{max_seq_len: 512}}\n", encoding="utf-8"
    )
    console = Console(record=True, width=160, color_system=None)
    inspect_command(console, source=None, files=None, blocks=None, heldout_fraction=None, manifest=path, tokens="tiny")
    text = console.export_text()
    assert "max_seq_len 512" in text and "lv2-api-train" in text
    with pytest.raises(TrajhpcError, match="--manifest: takes the data settings from the manifest; drop --file"):
        inspect_command(console, source=None, files=[hub.LV1], blocks=None, heldout_fraction=None, manifest=path)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(source=Path("/tmp"), hf="a/b"), "--source and --hf: give one"),
        (dict(revision="main"), "--revision: only with --hf"),
        (dict(hf="nope"), "--hf: expected a Hugging Face dataset id"),
        (dict(hf="a/b", revision="a b"), "--revision: expected a branch"),
        (dict(max_seq_len=4, tokens="tiny"), "--max-seq-len: must be at least 16"),
    ],
)
def test_inspect_option_errors(kwargs, message):
    args = dict(source=None, files=None, blocks=None, heldout_fraction=None) | kwargs
    with pytest.raises(TrajhpcError, match=message):
        inspect_command(Console(record=True), **args)


def test_cli_inspect_hf_not_cached_is_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "trajhpc.cli", "data", "inspect", "--hf", hub.REPO, "--file", hub.LV1],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "data.source.hf" in lines[0] and "not in the local Hugging Face cache" in lines[0]
