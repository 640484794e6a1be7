"""How every benchmark prints its figures: aligned name-value lines, or JSON for scripts."""

from __future__ import annotations

import json


def show(results: dict, as_json: bool) -> bool:
    """Print `results`; returns True when the caller should print its target lines too."""
    if as_json:
        print(json.dumps(results, indent=2))
        return False
    width = max(len(k) for k in results)
    for k, v in results.items():
        print(f"{k:<{width}}  {v}")
    print()
    return True
