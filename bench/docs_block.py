"""Writing a benchmark's generated tables into docs/benchmarks.md, between its start and end markers."""

from __future__ import annotations

from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def replace_block(name: str, text: str, docs: Path = DOCS) -> None:
    """Replace what lies between `<!-- {name}:start -->` and `<!-- {name}:end -->` in `docs` with `text`; when the
    markers are missing, say so and leave the file alone (the tables stay in bench/results)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    doc = docs.read_text()
    if start not in doc or end not in doc:
        print(f"{docs} has no {start} … {end} block; the tables are in bench/results only")
        return
    head, rest = doc.split(start, 1)
    _, tail = rest.split(end, 1)
    docs.write_text(f"{head}{start}\n\n{text}\n{end}{tail}")
