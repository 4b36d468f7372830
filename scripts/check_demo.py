"""CI's check of `make demo`: what a newcomer would call a broken first run fails here.

Fails (exit 1, one line per problem) when result.json has any error evidence, when no LLM planned
the case, or when the top of the differential does not rest on both the typed history and the
recorded interview (a knowledge.link of each). Standard library only.

Usage: python scripts/check_demo.py out/demo/result.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def problems(result: dict) -> list[str]:
    found = []
    evidence = {e["id"]: e for e in result.get("evidence", [])}
    for item in evidence.values():
        if item.get("error"):
            found.append(f"error evidence {item['id']} ({item['tool']}): {item['summary']}")
    planner = result.get("models", {}).get("planner", "")
    if planner == "rule":
        found.append("the case was planned by the rule planner, not the offline LLM: "
                     + "; ".join(result.get("report", {}).get("limitations", [])[:1]))
    links = {eid: e for eid, e in evidence.items() if e["tool"] == "knowledge.link" and not e.get("error")}
    history = {eid for eid, e in links.items() if e.get("payload", {}).get("source") == "history"}
    heard = {eid for eid, e in links.items()
             if evidence.get(e.get("payload", {}).get("source", ""), {}).get("tool", "").startswith("speech.")}
    differential = result.get("differential", [])
    if not differential:
        found.append("the differential is empty")
    else:
        cited = set(differential[0].get("evidence", []))
        if not cited & history:
            found.append(f"the top diagnosis ({differential[0]['name']}) does not rest on a link of the history")
        if not cited & heard:
            found.append(f"the top diagnosis ({differential[0]['name']}) does not rest on a link of the interview transcript")
    return found


def main() -> int:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "out/demo/result.json")
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"check_demo: cannot read {path}: {exc}")
        return 1
    found = problems(result)
    for line in found:
        print(f"check_demo: {line}")
    if not found:
        top = result["differential"][0]
        print(f"check_demo: ok — {len(result['evidence'])} evidence items, none in error; top: {top['name']} "
              f"[{', '.join(top['evidence'])}]; grounding {result['grounding'].get('supported')}/"
              f"{result['grounding'].get('sentences')} supported")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
