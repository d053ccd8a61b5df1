"""Ratio table from `pytest benchmarks --benchmark-only --benchmark-json=FILE`:
python benchmarks/ratios.py FILE  (median times; ratios within one run)."""
import json
import sys
from collections import defaultdict


def main(path):
    groups = defaultdict(dict)
    for b in json.load(open(path))["benchmarks"]:
        groups[b["group"]][b["extra_info"]["impl"]] = b["stats"]["median"]
    print("| case | fused | eager | compiled | floor | eager / fused | compiled / fused | fused / floor |")
    print("|---|---|---|---|---|---|---|---|")
    for group, t in groups.items():
        f = t.get("fused")

        def ms(k):
            return f"{t[k] * 1e3:.3f} ms" if k in t else "-"

        def ratio(a, b):
            return f"{t[a] / t[b]:.2f}" if a in t and b in t else "-"

        print(f"| {group} | {ms('fused')} | {ms('eager')} | {ms('compiled')} | {ms('floor')} | "
              f"{ratio('eager', 'fused')} | {ratio('compiled', 'fused')} | {ratio('fused', 'floor')} |")
        if "fused-forward" in t and f:
            print(f"| {group} (forward only) | {ms('fused-forward')} | | | {ms('floor')} | | | "
                  f"{ratio('fused-forward', 'floor')} |")


if __name__ == "__main__":
    main(sys.argv[1])
