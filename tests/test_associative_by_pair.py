"""benchmarks.associative_by_pair: answers grouped by the queried pair, and a model folder of another segment size
refused."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import associative_by_pair
from rmt.build import memory_model, random_backbone
from rmt.config import RMTConfig


class LastPairOnly(torch.nn.Module):
    """Predicts the value of the sample's fourth pair whatever is asked: a memory that kept only the last pair."""

    def __init__(self, task) -> None:
        super().__init__()
        self.task, self.device = task, torch.device("cpu")

    def forward(self, input_ids, attention_mask):
        task = self.task
        logits = torch.zeros(*input_ids.shape, task.vocab_size)
        last_value = input_ids[:, task.lead_padding + 2 * task.num_pairs - 1]
        logits[torch.arange(len(input_ids)), task.answer_start - 1, last_value] = 1.0
        return type("Output", (), {"logits": logits})()


def test_answers_are_grouped_by_the_queried_pair():
    task = associative_by_pair.task_for(5)
    result = associative_by_pair.accuracy_by_pair(LastPairOnly(task), task, 512)
    assert sum(result["samples_by_pair"]) == 512 and min(result["samples_by_pair"]) > 80
    assert result["by_pair"][3] == 1.0
    assert max(result["by_pair"][:3]) < 0.3  # right only where the asked value equals the last one (1 in 10)
    expected = sum(a * n for a, n in zip(result["by_pair"], result["samples_by_pair"], strict=True)) / 512
    assert result["accuracy"] == pytest.approx(expected, abs=1e-3)
    assert result["answer_among_values"] == 1.0  # the last pair's value is always one of the sample's
    assert 0.3 < result["guess_among_values"] < 0.35  # 1/4 + 3/4 * 1/10: the asked value, or another equal to it


def test_answers_outside_the_samples_values_are_counted_so():
    task = associative_by_pair.task_for(5)
    model = LastPairOnly(task)
    real_forward = model.forward

    def query_token(input_ids, attention_mask):  # answers QUERY, which is no value
        logits = real_forward(input_ids, attention_mask).logits
        logits[:, task.answer_start - 1, task.query_token_id] = 2.0
        return type("Output", (), {"logits": logits})()

    model.forward = query_token
    result = associative_by_pair.accuracy_by_pair(model, task, 256)
    assert result["accuracy"] == 0.0 and result["answer_among_values"] == 0.0


def test_a_saved_cell_model_is_measured_and_another_segment_size_refused(tmp_path, capsys):
    task = associative_by_pair.task_for(5)
    backbone = random_backbone("llama", task.vocab_size, num_layers=1, hidden_size=32, num_heads=4, max_positions=64)
    config = RMTConfig(num_memory_tokens=3, segment_size=task.segment_size_for(5))
    memory_model(backbone, config).save_pretrained(tmp_path / "model")
    output = tmp_path / "by-pair.json"
    argv = [str(tmp_path / "model"), "--segments", "5", "--samples", "256", "--output", str(output)]
    assert associative_by_pair.main(argv) == 0
    record = json.loads(output.read_text())
    assert (
        record["command"].endswith(" ".join(argv)) and len(record["results"][str(tmp_path / "model")]["by_pair"]) == 4
    )
    assert "overall; by pair 1-4:" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="reads segments of 3 tokens, not the 6 of 2 segments"):
        associative_by_pair.main([str(tmp_path / "model"), "--segments", "2", "--samples", "8"])
    with pytest.raises(SystemExit):  # as many tokens per segment as 5, but the task without its filler tokens
        associative_by_pair.main([str(tmp_path / "model"), "--segments", "4"])
    assert "invalid choice: 4" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--samples must be 1-256 or a multiple of 256, got 300"):
        associative_by_pair.main([str(tmp_path / "model"), "--segments", "5", "--samples", "300"])
    assert associative_by_pair.main([str(tmp_path / "model"), "--segments", "5", "--samples", "2"]) == 0
    assert " - " in capsys.readouterr().out  # pairs that no sample asked
