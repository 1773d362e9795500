"""edgekit.build.quant.config: schemes and validation errors."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edgekit.build.quant import SCHEMES, make_config
from edgekit.errors import ConfigError


@pytest.mark.parametrize("name", list(SCHEMES))
def test_every_scheme_builds(name):
    cfg = make_config(name)
    assert cfg.scheme == name
    assert cfg.weight_bits in (1, 2)


def test_aliases_and_case():
    assert make_config("W1A1").scheme == "bit-w1a1"
    assert make_config("w2a8").weight_bits == 2
    cfg = make_config("w1e1a1")
    assert (cfg.weight_bits, cfg.embedding_bits, cfg.activation_bits) == (1, 1, 1)
    assert make_config("bibert-w1a1").bi_attention


def test_unknown_scheme_lists_valid_ones():
    with pytest.raises(ConfigError) as err:
        make_config("bit-w3a3")
    text = str(err.value)
    assert "bit-w3a3" in text and "bit-w1a1" in text and "ternary-w2a8" in text and "\n" not in text


@pytest.mark.parametrize(
    "field,value,allowed",
    [
        ("weight_bits", 3, "1, 2 or 32"),
        ("activation_bits", 2, "1, 4, 8 or 32"),
        ("embedding_bits", 8, "1, 2 or 32"),
        ("attention_bits", 0, "1, 4, 8 or 32"),
    ],
)
def test_bits_out_of_range(field, value, allowed):
    with pytest.raises(ConfigError) as err:
        make_config("bit-w1a1", **{field: value})
    assert f"quant.{field}: must be {allowed} (got {value})" in str(err.value)


def test_inconsistent_methods():
    with pytest.raises(ConfigError, match="weight_method"):
        make_config("ternary-w2a8", weight_bits=1)
    with pytest.raises(ConfigError, match="bi_attention"):
        make_config("bit-w1a8", bi_attention=True)
    with pytest.raises(ConfigError, match="extra|not permitted|unexpected"):
        make_config("bit-w1a1", weigth_bits=1)


def test_frozen():
    cfg = make_config("bit-w1a1")
    with pytest.raises(ValidationError):
        cfg.weight_bits = 2
