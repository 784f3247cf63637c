"""The README's Python examples run as written: each ```python block is executed, in order, in a fresh folder. The
blocks that continue an earlier example (streaming, the diagonal engine) get the few names they take from it (a
tokenizer, a document in chunks, prompts) from a prelude here; the training examples run 3 of their 600 steps."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import tiny_model_folder

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.MULTILINE | re.DOTALL)


# What each block uses without defining it, by a name it alone defines or calls.
PRELUDES = {
    "model.stream()": """
from conftest import word_tokenizer

document = torch.randint(0, 1000, (1, 700))
chunks = document.split(97, dim=1)  # chunks that do not align with the segments
question_ids = torch.randint(0, 1000, (1, 5))
tokenizer = word_tokenizer("readme-tokenizer")  # a real tokenizer with fewer ids than the model's 1000
prompts = torch.randint(0, 1000, (2, 9))
mask = torch.ones_like(prompts)
mask[1, 6:] = 0  # a shorter prompt in the same batch
""",
    "DiagonalARMT(": """
from transformers import LlamaConfig, LlamaForCausalLM

backbone = LlamaForCausalLM(
    LlamaConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
)
input_ids = torch.randint(0, 1000, (1, 2100))
prompt_ids = torch.randint(0, 1000, (1, 1030))
""",
}


def stand_in_minilm(folder: Path, monkeypatch) -> None:
    """The offline MiniLM package is an optional install: `minilm` names a tiny BERT classifier with a word
    tokenizer in `folder` (the real weights load in the slow tests)."""
    import rmt.build

    tiny_model_folder(
        folder / "model", "bert", labels=["bathroom", "bedroom", "garden", "hallway", "kitchen", "office"]
    )
    monkeypatch.setattr(rmt.build, "_package_dir", lambda module, package: str(folder))


def test_the_readme_has_the_examples_this_test_runs():
    blocks = python_blocks()
    assert len(blocks) == 7
    assert all(any(key in block for block in blocks) for key in PRELUDES)
    assert sum("steps=600" in block for block in blocks) == 3


def stand_in_hub(folder: Path, monkeypatch) -> None:
    """No Hub is reachable in tests: push_to_hub's upload lands in `folder`/<repo id>, and from_pretrained's download
    reads it from there."""
    import shutil

    import huggingface_hub

    class Api:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **options):
            pass

        def upload_folder(self, repo_id, folder_path, **options):
            shutil.copytree(folder_path, folder / repo_id, dirs_exist_ok=True)
            return huggingface_hub.CommitInfo(
                commit_url=f"{repo_id}/commit/1", commit_message="", commit_description="", oid="1"
            )

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo_id, name, **hub: str(folder / repo_id / name))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **hub: str(folder / repo_id))


def stand_in_books(monkeypatch) -> None:
    """The built-in corpus's packages are an optional install: prose-like text stands in for its books."""
    from conftest import background_text

    import rmt.data.haystack

    books = rmt.data.haystack.Haystack.from_text(background_text(600))
    monkeypatch.setattr(rmt.data.haystack, "default_haystack", lambda *args, **kwargs: books)


@pytest.mark.parametrize("index", range(7))
def test_readme_example_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stand_in_hub(tmp_path / "hub", monkeypatch)
    stand_in_minilm(tmp_path / "minilm-package", monkeypatch)
    stand_in_books(monkeypatch)
    namespace: dict = {}
    for block in python_blocks()[: index + 1]:  # later blocks continue the earlier ones' model
        prelude = "".join(code for key, code in PRELUDES.items() if key in block)
        torch.manual_seed(0)
        exec(
            compile("import torch\n" + prelude + block.replace("steps=600", "steps=3"), str(README), "exec"), namespace
        )
    if index == 0:  # the shapes its comments give
        out = namespace["out"]
        assert (out.logits.shape, out.memory_state.shape) == ((2, 1000, 1000), (2, 8, 64))
    if index == 1:  # a score per room, from the classifier's new head
        assert namespace["classifier"](**namespace["batch"]).logits.shape == (1, 6)
    if index == 2:  # the stream's memory is the one-pass memory
        one_pass = namespace["model"](namespace["document"], logits="none").memory_state
        torch.testing.assert_close(namespace["state"], one_pass)
        answers = namespace["answers"]
        assert len(answers) == 2 and all(isinstance(answer, str) for answer in answers)
    if index == 3:  # the engine gives what the model gives (every position's logits last), as its comments say
        model, input_ids = namespace["model"], namespace["input_ids"]
        with torch.no_grad():
            torch.testing.assert_close(namespace["out"].logits, model(input_ids).logits)
            expected = model.generate(namespace["prompt_ids"], max_new_tokens=20)
        assert torch.equal(namespace["generated"], expected)
    if index == 4:
        assert namespace["records"][-1]["step"] == 3 and "eval_accuracy" in namespace["records"][-1]
    if index == 5:  # Hugging Face's Trainer continued the training example's model
        assert namespace["trainer"].state.global_step == 3 and namespace["trainer"].model is namespace["model"]
    if index == 6:  # the Trainer on BABILong samples: three steps of the encoder, a checkpoint it reads back
        from rmt import RMTForSequenceClassification

        assert namespace["trainer"].state.global_step == 3 and len(namespace["samples"]) == 512
        saved = tmp_path / "runs" / "qa1-trainer" / "checkpoint-3"
        loaded = RMTForSequenceClassification.from_pretrained(saved)
        assert loaded.backbone.config.id2label == dict(enumerate(namespace["rooms"]))
