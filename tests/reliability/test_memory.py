"""Exit-head feature collection keeps only the features, not each batch's hidden states.

The memory a collection holds is measured exactly, as the bytes of the storages behind the
per-batch tensors it keeps until it concatenates them (RSS is too noisy on a tiny model: the
allocator's working set for one batch is the same size as what a leak adds over thousands).
"""

from __future__ import annotations

import torch

from edgekit.deploy import data


def test_feature_collection_holds_only_the_features(encoders, monkeypatch):
    from edgekit.build.exits.model import MultiExitModel
    from edgekit.build.exits.train import collect

    model = MultiExitModel(encoders("bert-classifier"))  # exits after layers 1 and 2: one head's features kept
    sents = data.sample_texts()
    texts = [sents[i % len(sents)] for i in range(3000)]
    held: list[int] = []
    real_cat = torch.cat

    def cat(tensors, *args, **kwargs):
        held.append(sum(t.untyped_storage().nbytes() for t in tensors))  # what the kept tensors keep alive
        return real_cat(tensors, *args, **kwargs)

    monkeypatch.setattr(torch, "cat", cat)
    out = collect(model, texts, 128, 128, "cpu")
    monkeypatch.undo()
    kept = [out["features"][0], out["final"]]
    assert len(held) == len(kept) and kept[0].shape == (3000, 32)
    for held_bytes, t in zip(held, kept):
        # A view of the CLS row keeps its batch's whole hidden state (batch x sequence x 32
        # floats): ~sequence times the features' own bytes. Copies hold what they need.
        assert held_bytes <= 1.01 * t.numel() * t.element_size(), (held_bytes, t.shape)
