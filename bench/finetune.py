"""Fine-tune the default encoder (all-MiniLM-L6-v2) as a classifier on a real task.

The compression benchmarks (early exit, low-bit) start from a *trained* classifier, as a
user would. This script makes one: MiniLM-L6 + a linear head fine-tuned on
bench/data/debian-sections (Debian package descriptions -> archive section, real text and
real labels; see that folder's README). Runs on CPU or CUDA; on a GPU it takes a minute.

    python bench/finetune.py --out .ckpt/minilm-debian [--epochs 4] [--fp16-copy .ckpt/minilm-debian-fp16]

Writes a Hugging Face checkpoint (model + tokenizer + id2label) that `edgekit export`
accepts, and prints dev/test accuracy.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data" / "debian-sections"


def read(split: str, data: Path = DATA) -> tuple[list[str], list[str]]:
    rows = [json.loads(line) for line in (data / f"{split}.jsonl").read_text().splitlines() if line.strip()]
    return [r["text"] for r in rows], [r["label"] for r in rows]


def accuracy(model, tok, texts, labels, label_ids, device, max_length, batch=128) -> float:
    import torch

    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(texts), batch):
            enc = tok(texts[i : i + batch], padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(device)
            pred = model(**enc).logits.argmax(-1).cpu()
            correct += sum(int(p) == label_ids[y] for p, y in zip(pred, labels[i : i + batch]))
    return correct / len(texts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="base encoder dir (default: all-MiniLM-L6-v2)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=DATA, help="folder with train/dev/test.jsonl (default: bench/data/debian-sections)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="use only this many train/dev/test rows (smoke test)")
    ap.add_argument("--fp16-copy", type=Path, help="also save an fp16 copy (small enough to travel)")
    args = ap.parse_args()

    import torch
    import transformers

    from edgekit.build.checkpoint import resolve

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    train_x, train_y = read("train", args.data)
    dev_x, dev_y = read("dev", args.data)
    test_x, test_y = read("test", args.data)
    if args.limit:
        train_x, train_y, dev_x, dev_y, test_x, test_y = (v[: args.limit] for v in (train_x, train_y, dev_x, dev_y, test_x, test_y))
    labels = sorted(set(read("train", args.data)[1]))
    label_ids = {name: i for i, name in enumerate(labels)}
    base = resolve(args.model)
    tok = transformers.AutoTokenizer.from_pretrained(base)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        base,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id=label_ids,
        dtype=torch.float32,
    ).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    steps = args.epochs * ((len(train_x) + args.batch - 1) // args.batch)
    sched = transformers.get_linear_schedule_with_warmup(opt, int(0.06 * steps), steps)
    order = list(range(len(train_x)))
    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        random.shuffle(order)
        total = 0.0
        for i in range(0, len(order), args.batch):
            idx = order[i : i + args.batch]
            enc = tok([train_x[j] for j in idx], padding=True, truncation=True, max_length=args.max_length, return_tensors="pt").to(device)
            y = torch.tensor([label_ids[train_y[j]] for j in idx], device=device)
            loss = torch.nn.functional.cross_entropy(model(**enc).logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        dev_acc = accuracy(model, tok, dev_x, dev_y, label_ids, device, args.max_length)
        print(f"epoch {epoch + 1}: train loss {total / len(order):.4f}, dev accuracy {dev_acc:.4f} ({time.time() - t0:.0f}s)", flush=True)
    test_acc = accuracy(model, tok, test_x, test_y, label_ids, device, args.max_length)
    print(json.dumps({"dev_accuracy": dev_acc, "test_accuracy": test_acc, "seconds": round(time.time() - t0, 1), "device": device}))
    model.cpu().save_pretrained(args.out)
    tok.save_pretrained(args.out)
    (args.out / "finetune.json").write_text(
        json.dumps({"dev_accuracy": dev_acc, "test_accuracy": test_acc, "epochs": args.epochs, "data": str(args.data)}, indent=2)
    )
    if args.fp16_copy:
        model.half().save_pretrained(args.fp16_copy)
        tok.save_pretrained(args.fp16_copy)


if __name__ == "__main__":
    main()
