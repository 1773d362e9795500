"""Build edgekit's shipped sample data from real text available offline.

Source: the Python language reference topics shipped with CPython (``pydoc_data.topics``),
real English technical prose. Written once and committed, so the files do not change with
the Python version that reads them:

- ``edgekit/data/pydoc_pairs.jsonl``: {"query": section heading, "doc": first paragraph of
  that section} pairs, a small real retrieval task for embedding models (recall@k).
- ``edgekit/data/pydoc_sentences.txt``: one paragraph-sentence per line, for parity checks
  and for drawing realistic sequence lengths.

Run: python bench/data/make_pydoc_data.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from pydoc_data.topics import topics

OUT = Path(__file__).resolve().parents[2] / "edgekit" / "data"
UNDERLINE = re.compile(r"^([*=\-~^\"])\1{3,}$")


def paragraphs(body: str) -> list[str]:
    """Prose paragraphs: skip code blocks (indented) and grammar rules."""
    out = []
    for block in re.split(r"\n\s*\n", body):
        lines = block.splitlines()
        if not lines or lines[0].startswith((" ", "\t")) or "::=" in block:
            continue
        text = " ".join(line.strip() for line in lines).strip()
        if len(text.split()) >= 8:
            out.append(text)
    return out


def sections(text: str):
    """Yield (heading, body) for each underlined heading."""
    lines = text.splitlines()
    heads = [i for i in range(1, len(lines)) if UNDERLINE.match(lines[i].strip()) and lines[i - 1].strip()]
    for n, i in enumerate(heads):
        end = heads[n + 1] - 1 if n + 1 < len(heads) else len(lines)
        yield lines[i - 1].strip(), "\n".join(lines[i + 1 : end])


def main() -> None:
    pairs, sentences, seen = [], [], set()
    for key in sorted(topics):
        for heading, body in sections(topics[key]):
            paras = paragraphs(body)
            if not paras or heading.lower() in seen:
                continue
            seen.add(heading.lower())
            pairs.append({"query": heading, "doc": paras[0]})
            for para in paras:
                sentences += [s for s in re.split(r"(?<=[.!?])\s+", para) if len(s.split()) >= 5]
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "pydoc_pairs.jsonl", "w") as f:
        for pair in pairs:
            f.write(json.dumps(pair) + "\n")
    unique = list(dict.fromkeys(sentences))
    (OUT / "pydoc_sentences.txt").write_text("\n".join(unique) + "\n")
    print(f"{len(pairs)} pairs, {len(unique)} sentences -> {OUT}")


if __name__ == "__main__":
    main()
