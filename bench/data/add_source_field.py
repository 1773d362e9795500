"""Add each row's Debian source package (``"source"``) to debian-sections and debian-works-with.

Rows of one source package are alike (a suite's binaries share words and labels), and the splits
are by source package: a dev set is a sample of source packages, not of rows. ``edgekit exits
calibrate --groups source`` bootstraps over them. Texts, labels and row order are left as they are;
the source is found by the row's text (synopsis + first paragraph, as both builders write it) in the
same apt lists the builders read.

    python bench/data/add_source_field.py --lists /tmp/aptlists-en
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_debian_works_with import LISTS, packages, read_index  # noqa: E402

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lists", default=LISTS, help="apt lists folder holding the bookworm main Packages and Translation-en")
    args = ap.parse_args()
    pk = glob.glob(args.lists.rstrip("/") + "/*_bookworm_main_binary-amd64_Packages*")
    tr = glob.glob(args.lists.rstrip("/") + "/*_bookworm_main_i18n_Translation-en*")
    if not pk or not tr:
        raise SystemExit(f"no bookworm main lists in {args.lists}: see make_debian_works_with.py for the apt-get line")
    source: dict[str, str] = {}
    for r in packages(read_index(pk[0]), read_index(tr[0])):
        source.setdefault(f"{r['synopsis']}. {r['body']}", r["source"])
    for task in ("debian-sections", "debian-works-with"):
        for split in ("train", "dev", "test"):
            path = HERE / task / f"{split}.jsonl"
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            missing = [r["text"][:60] for r in rows if r["text"] not in source]
            if missing:
                raise SystemExit(
                    f"{path}: {len(missing)} texts not in these lists (first: {missing[0]!r}); use the lists the data was built from"
                )
            for r in rows:
                r["source"] = source[r["text"]]
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
            groups = len({r["source"] for r in rows})
            print(
                f"{task}/{split}: {len(rows)} rows from {groups} source packages (largest {max(sum(r['source'] == s for r in rows) for s in {r['source'] for r in rows})})"
            )


if __name__ == "__main__":
    main()
