"""Markdown tables of a fault-suite run: `python tests/faults/summarize.py faults.jsonl`
(the file that `LONGTAIL_FAULT_REPORT=faults.jsonl python -m pytest tests/faults` appended to)."""
from __future__ import annotations

import json
import sys
from collections import defaultdict


def main(path: str) -> None:
    cases = [json.loads(line) for line in open(path) if line.strip()]
    concurrent = [c for c in cases if c["suite"] == "concurrent"]
    kills = [c for c in cases if c["suite"] == "kill"]
    bad = [c for c in cases if c["suite"] == "bad input"]
    if concurrent:
        print("| concurrent writers (4 x 10 commits) | rows lost | duplicate ids | conflicts reported (and retried) |")
        print("| --- | --- | --- | --- |")
        for c in concurrent:
            lost = c.get("rows_lost", c.get("updates_lost", c.get("partitions_wrong", 0)))
            print(f"| {c['case']} | {lost} | {c.get('duplicates', 0)} | {c['conflicts']} |")
        print()
    if kills:
        by_stage = defaultdict(list)
        for c in kills:
            by_stage[(c["stage"], c["kind"])].append(c)
        print("| killed job | kill points | unreadable tables | reruns that did not converge |")
        print("| --- | --- | --- | --- |")
        for (stage, kind), runs in sorted(by_stage.items()):
            points = ", ".join(f"`{r['point']}`" for r in runs)
            print(f"| `{stage}` ({kind}) | {points} | {sum(len(r['unreadable']) for r in runs)} | "
                  f"{sum(1 for r in runs if r['not_converged'])} |")
        print()
    if bad:
        print("| bad input or setting | exit status | error lines | tables changed | the line |")
        print("| --- | --- | --- | --- | --- |")
        for c in bad:
            message = c["message"].replace("|", "\\|")
            print(f"| {c['case']} | {c['status']} | {c['lines']} | {len(c['tables_changed'])} | `{message}` |")


if __name__ == "__main__":
    main(sys.argv[1])
