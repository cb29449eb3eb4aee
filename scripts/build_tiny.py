"""Rebuild the shipped tiny model (seed 0) into trajhpc/resources/tiny-v<N>/ (about 4 minutes on one core).

    python scripts/build_tiny.py            # rebuild, compare with the shipped model, replace it
    python scripts/build_tiny.py --check    # rebuild into a temporary folder and compare only

The comparison is the CI test's (tests/job/test_tiny_shipped.py): greedy answers on the fixed
probe set (trajhpc/job/tinyprobe.py). Bytes differ across CPUs; what the model does must not.
Run it after changing the recipe (and bump TINY_VERSION in trajhpc/spec.py then).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare a rebuild with the shipped model, change nothing")
    args = parser.parse_args()

    from trajhpc.job import models, tinyprobe

    shipped = models.SHIPPED_TINY
    with tempfile.TemporaryDirectory() as tmp:
        built = Path(tmp) / shipped.name
        built.mkdir()
        models.build_tiny(built, seed=0)
        if (shipped / "model.safetensors").is_file():
            items = tinyprobe.probe_items()
            share = tinyprobe.agreement(tinyprobe.greedy_answers(shipped, items), tinyprobe.greedy_answers(built, items))
            print(f"greedy answers equal to the shipped model's on {share:.0%} of {len(items)} probes")
        if args.check:
            return 0
        shutil.rmtree(shipped, ignore_errors=True)
        shutil.copytree(built, shipped)
    print(f"wrote {shipped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
