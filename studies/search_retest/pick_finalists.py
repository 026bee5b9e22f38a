"""Write finalists.json: the four architectures the re-test trains from scratch.

top / bottom: the first and last of the cell-based search's ranking (adversarial accuracy, then clean);
random: one of the other sampled candidates, drawn with a fixed seed (what sampling without scoring gives);
robnet_large: the paper's RobNet-large cell. Usage: python pick_finalists.py [SEARCH_FOLDER]
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from robnets.search import rank

HERE = Path(__file__).resolve().parent
ROBNET_LARGE = "1111-111111-01110110-1101010111"


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "runs" / "cell"
    rows = [r for r in json.loads((folder / "architectures.json").read_text()) if r.get("status") == "scored"]
    ranked = rank(rows)
    top, bottom = ranked[0], ranked[-1]
    others = sorted(r["index"] for r in ranked[1:-1])
    drawn = random.Random(2026).choice(others)
    pick = {r["index"]: r for r in rows}[drawn]
    finalists = [
        {"name": "top", "genotype": top["genotype"], "search_rank": 1, "search_adv": top["adv"]},
        {"name": "bottom", "genotype": bottom["genotype"], "search_rank": len(ranked), "search_adv": bottom["adv"]},
        {"name": "random", "genotype": pick["genotype"], "search_rank": ranked.index(pick) + 1,
         "search_adv": pick["adv"]},
        {"name": "robnet_large", "genotype": ROBNET_LARGE, "search_rank": None, "search_adv": None},
    ]
    (HERE / "finalists.json").write_text(json.dumps(finalists, indent=2) + "\n")
    for f in finalists:
        print(f"{f['name']:>12}  rank {f['search_rank']}  {f['genotype']}")


if __name__ == "__main__":
    main()
