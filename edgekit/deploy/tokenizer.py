"""Deploy-side tokenization with the ``tokenizers`` library only (no torch, no transformers).

Reads the ``tokenizer.json`` saved in every artifact and produces int64 numpy arrays
named as the graph's inputs. Tests check it matches the transformers tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.deploy.artifact import Manifest
from edgekit.errors import ArtifactError


class Tokenizer:
    def __init__(self, artifact_dir: Path, manifest: Manifest) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(artifact_dir) / "tokenizer.json"
        if not path.exists():
            raise ArtifactError(f"{artifact_dir}: tokenizer.json missing", hint="rebuild the artifact")
        self._tok = HFTokenizer.from_file(str(path))
        self._tok.no_padding()
        self._tok.no_truncation()
        self.info = manifest.tokenizer
        self.input_names = [t.name for t in manifest.inputs]
        self.max_length = manifest.tokenizer.max_length
        self.static = manifest.static_shape

    def text_of_length(self, seq_len: int) -> str:
        """Real text with at least ``seq_len`` tokens (sample sentences joined one by one)."""
        from edgekit.deploy import data

        joined = ""
        for sentence in data.sample_texts():
            joined = f"{joined} {sentence}".strip()
            if self.lengths([joined])[0] >= seq_len:
                break
        return joined

    def lengths(self, texts: list[str]) -> list[int]:
        """Token counts (specials included, truncated to max length) of each text."""
        self._tok.enable_truncation(self.max_length)
        return [len(e.ids) for e in self._tok.encode_batch(texts)]

    @property
    def limit(self) -> int:
        """The most tokens a text keeps (specials included): the static length, else the max length."""
        return min(self.static[1], self.max_length) if self.static else self.max_length

    def count_truncated(self, texts: list[str]) -> int:
        """How many of ``texts`` have more tokens than :attr:`limit`, so are cut when run."""
        self._tok.no_truncation()
        return sum(len(e.ids) > self.limit for e in self._tok.encode_batch(texts))

    def truncation_note(self, texts: list[str]) -> str | None:
        """A sentence saying how many texts are cut to the limit, or None if none is."""
        n = self.count_truncated(texts)
        if not n:
            return None
        return f"{n} of {len(texts)} texts are longer than the artifact's limit of {self.limit} tokens and were cut to it"

    def __call__(self, texts: list[str], *, pad_to: int | None = None) -> dict[str, np.ndarray]:
        """Tokenize, pad to the longest (or to ``pad_to`` / the static length) and truncate."""
        if self.static:
            pad_to = self.static[1]
        limit = min(pad_to or self.max_length, self.max_length)
        self._tok.enable_truncation(limit)  # counts the special tokens it adds
        encs = self._tok.encode_batch(texts)
        width = pad_to or max(len(e.ids) for e in encs)
        ids = np.full((len(encs), width), self.info.pad_id, dtype=np.int64)
        mask = np.zeros((len(encs), width), dtype=np.int64)
        types = np.zeros((len(encs), width), dtype=np.int64)
        for i, e in enumerate(encs):
            n = len(e.ids)
            ids[i, :n], mask[i, :n], types[i, :n] = e.ids, e.attention_mask, e.type_ids
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {name: feed[name] for name in self.input_names}
