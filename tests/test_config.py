"""RMTConfig validation: every bad value names its field and the allowed range; JSON round trip."""

from __future__ import annotations

import json

import pytest

from rmt.config import ADDED_AFTER_FIRST_FORMAT, SAVED_SINCE_FIRST_FORMAT, RMTConfig, field_help


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_memory_tokens": -1}, r"num_memory_tokens must be >= 0, got -1"),
        ({"segment_size": 0}, r"segment_size must be > 0, got 0"),
        ({"segment_size": -5}, r"segment_size must be > 0"),
        ({"bptt_depth": -2}, r"bptt_depth must be -1 \(all\) or >= 0"),
        ({"mode": "seq2seq"}, r"mode must be one of \('decoder', 'encoder'\)"),
        ({"write_init": "zeros"}, r"write_init must be one of"),
        ({"memory_positions": "random"}, r"memory_positions must be one of"),
        ({"loss_aggregation": "mean"}, r"loss_aggregation must be one of"),
        ({"segment_size": 2.5}, r"segment_size must be an integer"),
        ({"memory_kind": "armt", "mode": "encoder"}, r"memory_kind='armt' requires mode='decoder'"),
        ({"read_memory_only": True, "num_memory_tokens": 0}, r"read_memory_only needs num_memory_tokens >= 1"),
        ({"read_memory_only": "false"}, r"read_memory_only must be true or false, got 'false'"),
        ({"armt_write_norm": 1}, r"armt_write_norm must be true or false, got 1"),
        ({"xl_contiguous_positions": "no"}, r"xl_contiguous_positions must be true or false, got 'no'"),
        (
            {"xl_contiguous_positions": True, "num_memory_tokens": 2},
            r"xl_contiguous_positions .* needs xl_cache_tokens > 0 and num_memory_tokens > 0 \(got 0 and 2\)",
        ),
        (
            {"xl_contiguous_positions": True, "xl_cache_tokens": 4, "num_memory_tokens": 0},
            r"xl_contiguous_positions .* \(got 4 and 0\)",
        ),
        ({"sep_token_id": "102"}, r"sep_token_id must be a token id \(an integer >= 0\) or None, got '102'"),
        ({"cls_token_id": -1}, r"cls_token_id must be a token id"),
    ],
)
def test_invalid_values_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RMTConfig(**kwargs)


def test_json_round_trip(tmp_path):
    config = RMTConfig(num_memory_tokens=3, segment_size=17, bptt_depth=2, write_init="learned")
    config.save(tmp_path / "c.json")
    assert RMTConfig.load(tmp_path / "c.json") == config


def test_unknown_or_corrupt_json_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"unknown RMTConfig field\(s\) \['memory'\]"):
        RMTConfig.from_dict({"memory": 3})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        RMTConfig.load(tmp_path / "bad.json")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00garbage")  # a damaged file: not text at all
    with pytest.raises(ValueError, match="binary.json is not valid JSON"):
        RMTConfig.load(tmp_path / "binary.json")
    with pytest.raises(FileNotFoundError, match="memory config not found"):
        RMTConfig.load(tmp_path / "missing.json")


def test_every_field_is_documented():
    for name in RMTConfig.__dataclass_fields__:
        assert len(field_help(RMTConfig, name)) > 20, name


def test_every_field_is_in_the_first_format_or_has_the_value_older_files_meant():
    """A new RMTConfig field must say what a saved config without it meant, or changing its default later would
    change every model saved before the field existed."""
    fields = set(RMTConfig.__dataclass_fields__)
    first, later = set(SAVED_SINCE_FIRST_FORMAT), set(ADDED_AFTER_FIRST_FORMAT)
    assert first | later == fields and not first & later
    RMTConfig(**{**ADDED_AFTER_FIRST_FORMAT, "xl_cache_tokens": 4})  # values the config accepts


def test_a_saved_config_without_a_later_field_loads_with_the_value_its_model_had(tmp_path, monkeypatch):
    """Not with the field's default: were the default of memory_write_scale changed, a config saved before the field
    existed would still load as 'hidden', the scale its model was trained with."""
    saved = RMTConfig(num_memory_tokens=3, segment_size=17).to_dict()
    del saved["memory_write_scale"], saved["xl_cache_tokens"]
    (tmp_path / "c.json").write_text(json.dumps(saved))
    monkeypatch.setitem(ADDED_AFTER_FIRST_FORMAT, "memory_write_scale", "token_embeddings")  # unlike the default
    monkeypatch.setitem(ADDED_AFTER_FIRST_FORMAT, "xl_cache_tokens", 4)
    loaded = RMTConfig.load(tmp_path / "c.json")
    assert (loaded.memory_write_scale, loaded.xl_cache_tokens) == ("token_embeddings", 4)
