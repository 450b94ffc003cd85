"""Write the fuzz corpus of tests/test_fuzz.py (seeded mutations of ../shared/data) to a folder.

    python bench/fuzz_corpus.py OUT_FOLDER [--seed N]
    cxr-viewer info --json OUT_FOLDER ; cxr-viewer predict OUT_FOLDER

Every file must either open or be reported with one line; none may crash the process.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import cxr_testdata as td  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=20240611, help="the seed tests/test_fuzz.py uses by default")
    args = parser.parse_args()
    if not td.SHARED_DATA.is_dir():
        print(f"the real data is missing: {td.SHARED_DATA}", file=sys.stderr)
        return 2
    cases = td.build_fuzz_corpus(td.SHARED_DATA, args.out, seed=args.seed)
    with open(args.out / "cases.txt", "w", encoding="utf-8") as f:
        for c in cases:
            f.write(f"{c.path.name}\t{c.what}\n")
    print(f"{len(cases)} cases in {args.out} (the mutation of each: {args.out / 'cases.txt'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
