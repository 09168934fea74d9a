"""Write the evaluation of the cascade that ``fluent-emoji-3d-16to64`` replaced, for docs/pretrained.md.

Until commit b557cb6 the package held an unguided cascade trained by a short ``relaydiff demo``
run; ``scripts/eval_pretrained.py`` evaluated it (3,391 samples against all 3,391 data images)
and commit 593771b committed that output as ``docs/images/pretrained_eval.json``, which b557cb6
then overwrote with the new cascade's numbers. This copies the committed file unchanged from the
repository's history into its own file, with where it came from. Needs a git checkout with that
history.

    python scripts/replaced_cascade_eval.py [--out docs/images/pretrained_eval_replaced.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from relaydiff.io.files import write_json

COMMIT = "593771b9e3b974dc6740767b6666911290b1704b"
REPLACED_BY = "b557cb61d3d06db8e7fd9fe55e5e5b89e0c147e7"
PATH = "docs/images/pretrained_eval.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images/pretrained_eval_replaced.json"))
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    text = subprocess.run(["git", "show", f"{COMMIT}:{PATH}"], cwd=root, check=True,
                          capture_output=True, text=True).stdout
    write_json({"what": "scripts/eval_pretrained.py's output for the unguided cascade packaged as "
                        "fluent-emoji-3d-16to64 before it was replaced, as committed",
                "commit": COMMIT, "path": PATH, "replaced_by_commit": REPLACED_BY,
                "result": json.loads(text)}, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
