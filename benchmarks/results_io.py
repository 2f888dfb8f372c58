"""Output files of the benchmarks: figures in benchmarks/results/<name>.json and <name>.md."""

import json
import os
from typing import Optional

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def result_path(filename: str) -> str:
    """Return the path of `filename` under benchmarks/results, creating the folder."""
    os.makedirs(RESULTS, exist_ok=True)
    return os.path.join(RESULTS, filename)


def write_results(name: str, results: dict, markdown: Optional[str] = None) -> None:
    """Write `results` to <name>.json and `markdown` to <name>.md, then print the Markdown (or the JSON)."""
    with open(result_path(f"{name}.json"), "w") as handle:
        json.dump(results, handle, indent=2)
    if markdown is not None:
        with open(result_path(f"{name}.md"), "w") as handle:
            handle.write(markdown)
    print(markdown if markdown is not None else json.dumps(results, indent=2))
