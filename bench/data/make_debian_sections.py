"""Build a real text-classification task offline: Debian package descriptions -> section.

Text: each package's description as its Debian maintainer wrote it (the one-line synopsis
plus the first paragraph of the long description, from the archive's Translation-en).
Label: the archive section the package is filed under (games, science, multimedia, ...),
a human-assigned category. Packages of one source package stay on one side of the split
(hash of the source name), so near-identical descriptions do not leak from train to test.

Needs apt lists with translations (as root):
    apt-get -o Acquire::Languages=en update
Run:
    python bench/data/make_debian_sections.py
Writes bench/data/debian-sections/{train,dev,test}.jsonl and README.md (counts, source).
"""

from __future__ import annotations

import glob
import hashlib
import json
import re
import subprocess
from collections import Counter
from pathlib import Path

OUT = Path(__file__).resolve().parent / "debian-sections"
# Archive sections grouped into six labels whose descriptions are about what the program does.
LABELS = {
    "games": ("games",),
    "science": ("science", "math"),
    "multimedia": ("sound", "video"),
    "graphics": ("graphics",),
    "networking": ("net", "web", "mail", "httpd"),
    "text": ("text", "editors"),
}
SECTION_TO_LABEL = {s: label for label, ss in LABELS.items() for s in ss}
SKIP_NAME = re.compile(r"(-dev|-doc|-dbg|-dbgsym|-data|-common|-l10n.*|-examples|-tests?)$|^lib")
PER_LABEL = {"train": 1400, "dev": 200, "test": 200}


def stanzas(path: str):
    text = subprocess.run(["/usr/lib/apt/apt-helper", "cat-file", path], capture_output=True, text=True, check=True).stdout
    yield from parse_stanzas(text)


def parse_stanzas(text: str):
    """Deb822 stanzas of a Packages or Translation file, as {field: value} (continuation lines kept, newline-joined)."""
    for block in text.split("\n\n"):
        fields, key = {}, None
        for line in block.splitlines():
            if line.startswith((" ", "\t")) and key:
                fields[key] += "\n" + line
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields:
            yield fields


def first_paragraph(long: str) -> str:
    paras = []
    for line in long.splitlines()[1:]:
        line = line.strip()
        if line == ".":
            break
        paras.append(line)
    return " ".join(paras)


def main() -> None:
    lists = "/var/lib/apt/lists/"
    packages = glob.glob(lists + "*_bookworm_main_binary-amd64_Packages*")
    translations = glob.glob(lists + "*_bookworm_main_i18n_Translation-en*")
    if not packages or not translations:
        raise SystemExit("run 'apt-get -o Acquire::Languages=en update' first")
    long_desc = {(s["Package"], s.get("Description-md5")): s["Description-en"] for s in stanzas(translations[0]) if "Description-en" in s}
    rows, seen = [], set()
    for s in stanzas(packages[0]):
        label = SECTION_TO_LABEL.get(s.get("Section", "").split("/")[-1])
        name = s.get("Package", "")
        if label is None or SKIP_NAME.search(name):
            continue
        md5 = s.get("Description-md5")
        long = long_desc.get((name, md5))
        if long is None or md5 in seen:
            continue
        seen.add(md5)
        synopsis = long.splitlines()[0].strip()
        body = first_paragraph(long)
        if len(body.split()) < 8:
            continue
        source = s.get("Source", name).split()[0]
        rows.append({"text": f"{synopsis}. {body}", "label": label, "package": name, "source": source})
    splits = {"train": [], "dev": [], "test": []}
    counts = {k: Counter() for k in splits}
    for r in sorted(rows, key=lambda r: hashlib.sha256(r["package"].encode()).hexdigest()):
        h = int(hashlib.sha256(r["source"].encode()).hexdigest(), 16) % 10
        split = "test" if h == 0 else "dev" if h == 1 else "train"
        if counts[split][r["label"]] < PER_LABEL[split]:
            counts[split][r["label"]] += 1
            splits[split].append({"text": r["text"], "label": r["label"]})
    OUT.mkdir(parents=True, exist_ok=True)
    for split, items in splits.items():
        with open(OUT / f"{split}.jsonl", "w") as f:
            for item in items:
                f.write(json.dumps(item) + "\n")
    lines = [
        "# debian-sections",
        "",
        "Real text classification built offline by `bench/data/make_debian_sections.py`:",
        "Debian bookworm (main, amd64) package descriptions (synopsis + first paragraph of the long description,",
        "written by each package's maintainers) labelled with the archive section they are filed under.",
        "Split by source package (no source package on two sides).",
        "",
        "| label | archive sections | train | dev | test |",
        "|---|---|---:|---:|---:|",
    ]
    for label, secs in LABELS.items():
        lines.append(f"| {label} | {', '.join(secs)} | {counts['train'][label]} | {counts['dev'][label]} | {counts['test'][label]} |")
    (OUT / "README.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
