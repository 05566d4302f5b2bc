"""`kaggle-tli bench quick` (`make bench`): the quick version of every benchmark, one after the other.

Each writes into its own folder under `--out` (default `bench_out/`); the full versions are
`kaggle-tli bench transfer|convergence|norm|teachers|overhead|data` without `--quick`. Figures on docs/benchmarks.md come from the
full versions.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from . import convergence, norm, overhead, teachers, transfer
from . import data as pipeline


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kaggle-tli bench quick", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench_out", help="output folder (default: %(default)s)")
    parser.add_argument("--data", help="a Kaggle-shaped folder instead of Fashion-MNIST (convergence and norm)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    data = ["--data", args.data] if args.data else []
    steps = [
        ("transfer", lambda: transfer.main(["--quick", "--out", str(out / "transfer")])),
        ("overhead", lambda: overhead.main(["--steps", "20", "--repeats", "2", "--json", str(out / "overhead.json")])),
        ("convergence", lambda: convergence.main(["--quick", "--out", str(out / "convergence"), *data])),
        ("norm", lambda: norm.main(["--quick", "--out", str(out / "norm"), *data])),
        ("teachers", lambda: teachers.main(["--quick", "--out", str(out / "teachers"), *data])),
        # the case only: 1024-px JPEGs at 224 px, with and without the resize cache
        ("data", lambda: pipeline.main(["--formats", "jpg", "--sizes", "1024", "--train-sizes", "224", "--images", "64",
                                        "--out", str(out / "data")])),
    ]
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for name, run in steps:
        print(f"\n=== bench {name} (quick) ===", flush=True)
        code = run()
        if code:
            return code
    print(f"\nall quick benchmarks done in {time.perf_counter() - start:.0f} s; results in {out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
