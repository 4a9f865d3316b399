"""Write short arithmetic word problems with a numeric answer column (a verifiable task).

    python examples/word_problems/make_data.py --out data/word_problems [--train 2000] [--eval 200]

Writes ``train.jsonl`` and ``eval.jsonl``: one ``{"prompt", "answer", "op"}`` object per line, the
prompt a one- or two-sentence problem about small whole numbers, the answer its result as text.
The two files share no problem. Deterministic for a given ``--seed``.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

NAMES = ["Tom", "Anna", "Lee", "Maya", "Sam", "Ravi", "Lena", "Omar", "Kim", "Ben", "Zoe", "Ivan"]
ITEMS = ["apples", "pencils", "stickers", "marbles", "books", "cookies", "stamps", "shells", "cards", "coins"]


def problem(rng: random.Random) -> dict:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    op = rng.choice(["add", "sub", "mul"])
    if op == "add":
        a, b = rng.randint(2, 30), rng.randint(2, 30)
        text, ans = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?", a + b
    elif op == "sub":
        a = rng.randint(5, 40)
        b = rng.randint(1, a - 1)
        text, ans = f"{name} has {a} {item} and gives away {b}. How many {item} are left?", a - b
    else:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        text, ans = f"{name} has {a} bags with {b} {item} in each bag. How many {item} is that in total?", a * b
    return {"prompt": text, "answer": str(ans), "op": op}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/word_problems")
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--eval", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    seen: set[str] = set()
    rows: list[dict] = []
    while len(rows) < args.train + args.eval:
        p = problem(rng)
        if p["prompt"] not in seen:
            seen.add(p["prompt"])
            rows.append(p)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train.jsonl", rows[:args.train]), ("eval.jsonl", rows[args.train:])):
        (out / name).write_text("".join(json.dumps(r) + "\n" for r in part))
    print(f"wrote {args.train} training and {args.eval} held-out problems to {out}")


if __name__ == "__main__":
    main()
