"""Bad input answered in one line, nothing on disk changed: the command line's errors, the library's input checks,
resume that never silently restarts, and folder swaps that never leave a moment without a checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from conftest import VOCAB, tiny_decoder, tiny_encoder

import rmt.files as files
from rmt import RecurrentMemoryModel, RMTConfig, RMTForCausalLM, RMTForSequenceClassification
from rmt.build import random_backbone
from rmt.cli import main
from rmt.config import ADDED_AFTER_FIRST_FORMAT
from rmt.errors import InputError, RMTWarning

TINY = ["--task", "copy", "--task-size", "4", "--segments", "3", "--family", "llama", "--layers", "1"]
TINY += ["--hidden", "32", "--memory-tokens", "2", "--batch-size", "2", "--eval-every", "2", "--no-progress"]


def run_cli(args, capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def test_train_output_that_is_a_file(tmp_path, capsys):
    (tmp_path / "out").write_text("keep me")
    code, err = run_cli(["train", *TINY, "--steps", "2", "--output", str(tmp_path / "out")], capsys)
    assert code == 2 and "exists and is not a folder" in err and (tmp_path / "out").read_text() == "keep me"


def test_resume_without_a_checkpoint_is_an_error_and_keeps_the_log(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1}\n')
    code, err = run_cli(["train", *TINY, "--steps", "2", "--output", str(tmp_path / "run"), "--resume"], capsys)
    assert code == 2 and "no checkpoint" in err
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == '{"step": 1}\n'


@pytest.fixture
def trained_run(tmp_path, capsys):
    output = tmp_path / "run"
    assert main(["train", *TINY, "--steps", "2", "--checkpoint-every", "2", "--output", str(output)]) == 0
    capsys.readouterr()
    return output


def test_resume_with_other_settings_names_the_difference(trained_run, capsys):
    args = ["train", *TINY, "--steps", "4", "--output", str(trained_run), "--resume"]
    code, err = run_cli([*args, "--memory-tokens", "3"], capsys)
    assert code == 2 and "--memory-tokens: checkpoint 2, now 3" in err  # the flag, not the library's field
    code, err = run_cli([*args, "--segments", "4"], capsys)
    assert code == 2 and "segment size (from --task-size and --segments): checkpoint" in err
    code, err = run_cli([*args, "--hidden", "64"], capsys)
    assert code == 2 and "backbone hidden_size: checkpoint 32, now 64" in err
    # The restored optimizer and schedule would override a new learning rate; a new global batch changes the data.
    code, err = run_cli([*args, "--lr", "1e-5", "--batch-size", "4"], capsys)
    assert code == 2 and "--lr: checkpoint 0.001, now 1e-05" in err
    assert "global batch (--batch-size x --grad-accumulation x processes): checkpoint 2, now 4" in err
    code, err = run_cli([*args, "--decayed-parameters", "matrices"], capsys)  # other optimizer groups
    assert code == 2 and "--decayed-parameters: checkpoint 'all', now 'matrices'" in err
    code, err = run_cli([*args, "--trainable", "memory"], capsys)  # other parameters in the optimizer
    assert code == 2 and "--trainable: checkpoint 'all', now 'memory'" in err
    # A checkpoint written with FSDP has another layout: said so, not reported as a damaged accelerate/ folder.
    state_file = trained_run / "checkpoint" / "trainer_state.json"
    record = json.loads(state_file.read_text())
    record["train_config"]["fsdp"] = True
    state_file.write_text(json.dumps(record))
    code, err = run_cli(args, capsys)
    assert code == 2 and "it was saved with fsdp (layers sharded with FSDP) and this run does not shard them" in err
    record["train_config"]["fsdp"] = False
    state_file.write_text(json.dumps(record))
    # The same global batch split otherwise (to fit memory) gives the same data and gradient: resumes.
    assert run_cli([*args, "--batch-size", "1", "--grad-accumulation", "2"], capsys)[0] == 0


def test_resume_compares_a_memory_setting_added_after_the_checkpoint_with_its_default(trained_run, capsys, monkeypatch):
    """A checkpoint written before a config field existed lacks it; its model had the value of the models before
    the field (its default), so a resume that sets the field otherwise is refused (it was skipped) and one that keeps
    it goes on. That value, not a later default, is what the checkpoint is compared with."""
    state_file = trained_run / "checkpoint" / "trainer_state.json"
    record = json.loads(state_file.read_text())
    del record["rmt_config"]["memory_write_scale"]
    state_file.write_text(json.dumps(record))
    args = ["train", *TINY, "--steps", "4", "--output", str(trained_run), "--resume"]
    code, err = run_cli([*args, "--memory-write-scale", "token_embeddings"], capsys)
    assert code == 2 and "--memory-write-scale: checkpoint 'hidden', now 'token_embeddings'" in err
    with monkeypatch.context() as patch:  # as if the models before the field had written at the other scale
        patch.setitem(ADDED_AFTER_FIRST_FORMAT, "memory_write_scale", "token_embeddings")
        code, err = run_cli(args, capsys)
        assert code == 2 and "--memory-write-scale: checkpoint 'token_embeddings', now 'hidden'" in err
    assert run_cli(args, capsys)[0] == 0


def test_resume_from_a_damaged_checkpoint(trained_run, capsys):
    state = trained_run / "checkpoint" / "accelerate"
    target = next(p for p in state.iterdir() if p.name.startswith("optimizer"))
    target.write_bytes(b"garbage")
    code, err = run_cli(["train", *TINY, "--steps", "4", "--output", str(trained_run), "--resume"], capsys)
    assert code == 2 and "incomplete or corrupt" in err and target.read_bytes() == b"garbage"


def test_eval_errors(trained_run, capsys):
    model = str(trained_run / "model")
    code, err = run_cli(["eval", model, "--task", "copy", "--task-size", "4", "--batches", "0"], capsys)
    assert code == 2 and "--batches must be > 0" in err
    code, err = run_cli(["eval", model, "--task", "associative_retrieval"], capsys)  # 38 token ids > 12
    assert code == 2 and "embeds only" in err
    code, err = run_cli(["train", *TINY, "--task-size", "0", "--steps", "1", "--output", "x"], capsys)
    assert code == 2 and "--task-size must be > 0" in err


def test_xl_cache_with_the_default_gpt2_family_trains(tmp_path, capsys):
    args = [a for a in TINY if a not in ("--family", "llama")]
    assert main(["train", *args, "--xl-cache-tokens", "4", "--steps", "2", "--output", str(tmp_path / "xl")]) == 0


def test_internal_bugs_keep_their_traceback(monkeypatch):
    import rmt.cli.evaluate as evaluate

    def bug(args):
        raise RuntimeError("a bug, not bad input")

    monkeypatch.setattr(evaluate, "run", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["eval", "somewhere"])


def test_input_checks_of_the_model():
    model = RMTForCausalLM(tiny_decoder(), RMTConfig(num_memory_tokens=2, segment_size=4))
    ids = torch.randint(0, VOCAB, (2, 9))
    with pytest.raises(InputError, match="integer token ids"):
        model(ids.float())
    with pytest.raises(InputError, match="integer token ids"):
        model(ids.bool())
    with pytest.raises(InputError, match=f"ids from .* to {VOCAB}, but .* has ids 0..{VOCAB - 1}"):
        model(torch.cat([ids, torch.full((2, 1), VOCAB)], dim=1).clamp(min=0))
    with pytest.raises(InputError, match="only 0 \\(padding\\) and 1"):
        model(ids, attention_mask=torch.full_like(ids, 2))
    with pytest.raises(InputError, match="per-sample shape \\(2, 16\\).*\\(2, 32\\)"):
        model(ids, memory_state=torch.zeros(2, 2, 16))
    with pytest.raises(InputError, match="int64 or int32"):
        model(ids.to(torch.uint8))  # an id type the embedding cannot look up


def test_labels_are_checked_before_the_loss():
    """Out-of-range or non-integer labels fail with a message, not inside cross_entropy (a device assert on a GPU)."""
    model = RMTForCausalLM(tiny_decoder(), RMTConfig(num_memory_tokens=2, segment_size=4))
    ids = torch.randint(0, VOCAB, (2, 9))
    too_large = ids.clone()
    too_large[0, 5] = VOCAB
    with pytest.raises(InputError, match=f"token labels hold values from .* to {VOCAB}; allowed: 0..{VOCAB - 1}"):
        model(ids, labels=too_large)
    with pytest.raises(InputError, match="from -5 to -5.*or -100"):
        model(ids, labels=torch.full_like(ids, -5))
    with pytest.raises(InputError, match="int64 tensor, got torch.float32"):
        model.forward_backward(ids, labels=ids.float())
    labels = ids.clone()
    labels[:, :3] = -100  # ignored positions are fine
    assert model(ids, labels=labels).loss is not None
    encoder = RMTForSequenceClassification(
        tiny_encoder(), RMTConfig(mode="encoder", num_memory_tokens=2, segment_size=8)
    )
    classes = encoder.backbone.config.num_labels
    with pytest.raises(InputError, match=f"class labels hold values from 0 to {classes}; allowed: 0..{classes - 1}"):
        encoder(torch.randint(5, 100, (2, 12)), labels=torch.tensor([0, classes]))


def test_backbones_that_cannot_work_are_refused():
    from transformers import GPT2Config, GPT2Model

    with pytest.raises(InputError, match="no LM head.*GPT2LMHeadModel"):
        RMTForCausalLM(GPT2Model(GPT2Config(n_layer=1, n_embd=32, n_head=4)), RMTConfig(num_memory_tokens=1))
    small_vocab = random_backbone("bert", 64, 1, 32, 4, 64, num_labels=2)  # no ids 101/102
    with pytest.raises(InputError, match="cls_token_id is 101, outside its vocabulary of 64.*RMTConfig.cls_token_id"):
        RMTForSequenceClassification(small_vocab, RMTConfig(mode="encoder", num_memory_tokens=1, segment_size=8))
    model = RMTForSequenceClassification(
        small_vocab, RMTConfig(mode="encoder", num_memory_tokens=1, segment_size=8, cls_token_id=1, sep_token_id=2)
    )
    assert model(torch.randint(3, 64, (1, 20))).logits.shape == (1, 2)
    config = RMTConfig(mode="encoder", num_memory_tokens=2, segment_size=16)
    assert RMTForSequenceClassification(tiny_encoder(), config).cls_token_id == 101  # BERT's own id fits


def test_settings_that_do_not_apply_warn():
    with pytest.warns(UserWarning, match="d_mem=16 has no effect.*memory_kind='rmt'"):
        RMTConfig(d_mem=16)
    with pytest.warns(UserWarning, match="write_init='learned' has no effect.*'armt'"):
        RMTConfig(memory_kind="armt", write_init="learned")
    with pytest.warns(UserWarning, match="encoder_memory_input='embedding_layer' has no effect.*'decoder'"):
        RMTConfig(encoder_memory_input="embedding_layer")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RMTConfig(memory_kind="armt", d_mem=16)  # applies: no warning
        RMTConfig(memory_kind="armt", armt_write_norm=True)
    with pytest.warns(UserWarning, match="armt_write_norm=True has no effect.*memory_kind='rmt'"):
        RMTConfig(armt_write_norm=True)
    # Found by a documentation audit: these were ignored without a word.
    with pytest.warns(UserWarning, match="cls_token_id=5 has no effect with mode='decoder'"):
        RMTConfig(cls_token_id=5)
    with pytest.warns(UserWarning, match="loss_aggregation='segments' has no effect with mode='encoder'"):
        RMTConfig(mode="encoder", loss_aggregation="segments")
    with pytest.warns(UserWarning, match="write_init='learned' has no effect with read_memory_only=True"):
        RMTConfig(num_memory_tokens=2, read_memory_only=True, write_init="learned")
    for kind in ({"mode": "encoder"}, {"memory_kind": "armt"}):  # the encoder wrote its memory all the same
        with pytest.raises(InputError, match="read_memory_only is a control experiment of decoder RMT"):
            RMTConfig(num_memory_tokens=2, read_memory_only=True, **kind)


def test_from_pretrained_keeps_errors_that_are_not_about_the_files(tmp_path):
    RMTForCausalLM(tiny_decoder(), RMTConfig(num_memory_tokens=1, segment_size=4)).save_pretrained(tmp_path / "m")
    with pytest.raises(RuntimeError, match="not-a-device") as caught:  # torch's own error, as it raised it
        RMTForCausalLM.from_pretrained(tmp_path / "m", device_map={"": "not-a-device"})
    assert not isinstance(caught.value, InputError) and "corrupt checkpoint" not in str(caught.value)


def test_a_crash_between_the_two_renames_keeps_the_old_folder(tmp_path, monkeypatch):
    """The portable swap (no renameat2): the old folder is set aside, then the new one moved in. A crash in between
    must not lose the checkpoint: the next reader restores it, and leftovers are cleaned up."""
    target = tmp_path / "checkpoint"
    target.mkdir()
    (target / "step").write_text("3")
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    real_replace = os.replace
    calls = []

    def crash_on_second(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies here
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", crash_on_second)
    with pytest.raises(KeyboardInterrupt), files.atomic_directory(target) as tmp:
        (tmp / "step").write_text("6")
    monkeypatch.setattr(files.os, "replace", real_replace)
    assert not target.exists()  # the window the crash fell into
    set_aside = tmp_path / f".checkpoint.old-{os.getpid()}"
    os.rename(set_aside, tmp_path / ".checkpoint.old-999999999")  # as if left by a process that has ended
    assert files.set_aside_exists(target)  # what `--resume` asks before restoring it
    files.recover_directory(target)
    assert (target / "step").read_text() == "3" and not files.set_aside_exists(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_the_linux_swap_has_no_window(tmp_path, monkeypatch):
    """With renameat2 the two folders are exchanged in one call: at every os-level step the target exists."""
    if getattr(files._libc(), "renameat2", None) is None:
        pytest.skip("no renameat2 in this C library")
    target = tmp_path / "checkpoint"
    target.mkdir()
    (target / "step").write_text("3")
    seen = []
    real_rmtree = shutil.rmtree

    def watch(path, *args, **kwargs):
        seen.append(target.exists() and (target / "step").read_text())
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(files.shutil, "rmtree", watch)
    renamed = []  # the portable swap renames the target aside (a window without it): it must not run
    real_replace = os.replace
    monkeypatch.setattr(files.os, "replace", lambda src, dst: (renamed.append(src), real_replace(src, dst)))
    with files.atomic_directory(target) as tmp:
        (tmp / "step").write_text("6")
    assert (target / "step").read_text() == "6" and all(seen) and renamed == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_a_folder_reaches_the_disk_before_its_swap(tmp_path, monkeypatch):
    """Every file and folder written in the block is fsynced before the swap (a rename alone can reach the disk
    before the data it names), and the parent folder after it."""
    target = tmp_path / "checkpoint"
    events = []
    real_sync, real_replace = files._sync, os.replace
    monkeypatch.setattr(files, "_sync", lambda path: (events.append(("sync", path)), real_sync(path)))
    monkeypatch.setattr(files.os, "replace", lambda src, dst: (events.append(("rename", dst)), real_replace(src, dst)))
    for version in ("1", "2"):  # a new folder, then one that replaces it
        events.clear()
        with files.atomic_directory(target) as tmp:
            (tmp / "sub").mkdir()
            (tmp / "step").write_text(version)
            (tmp / "sub" / "weights").write_text(version)
        synced = [path for kind, path in events if kind == "sync"]
        before_swap = {path.relative_to(tmp) for path in synced[:-1]}
        assert before_swap == {Path("."), Path("sub"), Path("step"), Path("sub/weights")}
        assert synced[-1] == tmp_path and events[-1] == ("sync", tmp_path)
        assert (target / "sub" / "weights").read_text() == version


def test_leftovers_of_dead_processes_are_removed_but_not_live_ones(tmp_path):
    target = tmp_path / "checkpoint"
    target.mkdir()
    dead = tmp_path / ".checkpoint.tmp-999999999-abc"
    live = tmp_path / f".checkpoint.tmp-{os.getppid()}-abc"  # a running process (our parent)
    dead.mkdir()
    live.mkdir()
    files.recover_directory(target)
    assert not dead.exists() and live.exists()


def test_a_load_deletes_nothing_and_a_save_removes_what_ended_processes_left(tmp_path):
    """A load removed every temporary folder whose process it could not see, so a job in another container or on
    another node deleted a save in progress there (its process id means nothing here). A load now only restores a
    set-aside version; the next save still removes the leftovers of ended processes."""
    target = tmp_path / "ckpt"
    RMTForCausalLM(tiny_decoder(), RMTConfig(num_memory_tokens=2, segment_size=4)).save_pretrained(target)
    unseen = tmp_path / ".ckpt.tmp-999999999-abc"  # no such process here: ended, or another container's writer
    unseen.mkdir()
    RecurrentMemoryModel.from_pretrained(target)
    assert unseen.exists()
    RMTForCausalLM(tiny_decoder(), RMTConfig(num_memory_tokens=2, segment_size=4)).save_pretrained(target)
    assert not unseen.exists()


def test_a_checkpoint_loads_where_its_parent_folder_cannot_be_listed(tmp_path, monkeypatch):
    """A home folder of mode 711 on a shared machine: listing it for leftovers raised PermissionError before."""
    target = tmp_path / "ckpt"
    RMTForCausalLM(tiny_decoder(), RMTConfig(num_memory_tokens=2, segment_size=4)).save_pretrained(target)
    real_iterdir = Path.iterdir

    def unlistable(self):
        if self == tmp_path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", unlistable)
    assert RecurrentMemoryModel.from_pretrained(target).config.num_memory_tokens == 2
    with pytest.raises(PermissionError):  # a writer must see its leftovers: it refuses instead
        files.recover_directory(target)


def test_saved_files_get_the_permissions_open_gives_and_kept_files_keep_theirs(tmp_path):
    """safetensors writes owner-only files (0600) whatever the umask: a checkpoint saved for a team could be read
    by its writer alone (and safetensors reported the refusal as "No such file", read as a corrupt checkpoint)."""
    mask = os.umask(0o022)
    try:
        target = tmp_path / "ckpt"
        RMTForCausalLM(tiny_decoder(), RMTConfig(num_memory_tokens=2, segment_size=4)).save_pretrained(target)
        private = target / "notes.txt"
        private.write_text("mine")
        private.chmod(0o600)
        RMTForCausalLM(tiny_decoder(), RMTConfig(num_memory_tokens=2, segment_size=4)).save_pretrained(target)
        modes = {p.relative_to(target).as_posix(): p.stat().st_mode & 0o777 for p in target.rglob("*") if p.is_file()}
        assert modes.pop("notes.txt") == 0o600  # carried over from the earlier folder as it was
        assert modes and set(modes.values()) == {0o644}, modes
        # The trainer's checkpoint folder, filled by several processes, is swapped in by replace_directory.
        tmp = files.temporary_directory(tmp_path / "checkpoint")
        (tmp / "state.bin").write_text("x")
        (tmp / "state.bin").chmod(0o600)
        files.replace_directory(tmp, tmp_path / "checkpoint")
        assert (tmp_path / "checkpoint" / "state.bin").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(mask)


def test_a_checkpoint_file_that_may_not_be_read_is_named(tmp_path, monkeypatch):
    """safetensors reported it as "No such file", which the loader took for a corrupt checkpoint. os.access is made
    to refuse the file: the tests may run as root, who may read anything."""
    target = tmp_path / "ckpt"
    RMTForCausalLM(tiny_decoder(), RMTConfig(num_memory_tokens=2, segment_size=4)).save_pretrained(target)
    real_access = os.access
    for refused in (target / "backbone" / "model.safetensors", target / "memory.safetensors", target / "backbone"):
        monkeypatch.setattr(
            os, "access", lambda file, mode, refused=refused: file != refused and real_access(file, mode)
        )
        with pytest.raises(InputError, match=f"cannot read {refused}: permission denied"):
            RecurrentMemoryModel.from_pretrained(target)
    # A file the load does not read (a private note kept from an earlier save) does not matter.
    (target / "backbone" / "notes.txt").write_text("mine")
    refused = target / "backbone" / "notes.txt"
    monkeypatch.setattr(os, "access", lambda file, mode: file != refused and real_access(file, mode))
    assert RecurrentMemoryModel.from_pretrained(target).config.num_memory_tokens == 2


def test_a_swap_whose_new_folder_is_gone_leaves_the_old_one_in_place(tmp_path):
    """renameat2 failing for a missing path was taken for "not supported": the portable swap then moved the current
    folder aside before failing too."""
    if getattr(files._libc(), "renameat2", None) is None:
        pytest.skip("no renameat2 in this C library")
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "step").write_text("3")
    with pytest.raises(FileNotFoundError):
        files.replace_directory(tmp_path / "gone", target)
    assert (target / "step").read_text() == "3" and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_the_temporary_file_of_a_killed_write_goes_with_the_next_write(tmp_path):
    """write_atomic's temporary file stays behind when its process is killed (SIGKILL, SIGTERM): the next write of
    that file removes it, not a write in progress by a running process."""
    dead = tmp_path / ".results.json.tmp-999999999-abc"
    live = tmp_path / f".results.json.tmp-{os.getppid()}-abc"
    other = tmp_path / ".table.md.tmp-999999999-abc"  # another file's: left to that file's next write
    for leftover in (dead, live, other):
        leftover.write_text("half")
    files.write_atomic(tmp_path / "results.json", "{}")
    assert not dead.exists() and live.exists() and other.exists()
    assert (tmp_path / "results.json").read_text() == "{}"


def test_a_failed_atomic_write_closes_its_file(tmp_path, monkeypatch):
    """fchmod failing (a file system that refuses it) left the temporary file's descriptor open."""
    opened = len(os.listdir("/proc/self/fd"))

    def refuse(*args):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(files.os, "fchmod", refuse)
    for _ in range(5):
        with pytest.raises(PermissionError):
            files.write_atomic(tmp_path / "result.json", "{}")
    assert len(os.listdir("/proc/self/fd")) == opened and not list(tmp_path.iterdir())


def test_metrics_log_survives_a_resume(trained_run, capsys):
    before = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert main(["train", *TINY, "--steps", "4", "--output", str(trained_run), "--resume"]) == 0
    after = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert after[: len(before)] == before and max(r["step"] for r in after) == 4


def test_atomic_writes_get_the_permissions_of_a_plain_write(tmp_path):
    """Results and checkpoints are readable by others when the umask says so (mkstemp alone makes them owner-only)."""
    previous = os.umask(0o022)
    try:
        files.write_atomic(tmp_path / "result.json", "{}")
        with files.atomic_directory(tmp_path / "model") as tmp:
            (tmp / "weights").write_text("w")
    finally:
        os.umask(previous)
    assert (tmp_path / "result.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o755


def test_an_atomic_file_write_through_a_symbolic_link_keeps_the_link(tmp_path):
    """write_atomic replaced a link with a regular file and left the file it pointed to as it was, unlike
    atomic_directory, which writes where a link points."""
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "results.json").write_text("old")
    (tmp_path / "results.json").symlink_to(tmp_path / "shared" / "results.json")
    files.write_atomic(tmp_path / "results.json", "new")
    assert (tmp_path / "results.json").is_symlink() and (tmp_path / "shared" / "results.json").read_text() == "new"


def test_a_metrics_line_cut_off_by_a_crash_does_not_stop_a_resume(trained_run, capsys):
    log = trained_run / "metrics.jsonl"
    before = [json.loads(line) for line in log.read_text().splitlines()]
    with log.open("a") as file:
        file.write('{"step": 3, "loss": 2.4')  # the append a crash (or a full disk) cut off
    assert main(["train", *TINY, "--steps", "4", "--output", str(trained_run), "--resume"]) == 0
    after = [json.loads(line) for line in log.read_text().splitlines()]
    assert after[: len(before)] == before and max(r["step"] for r in after) == 4


def test_a_damaged_metrics_line_before_the_last_is_named_by_its_line_number(trained_run, capsys):
    log = trained_run / "metrics.jsonl"
    log.write_text('{"step": 1}\n\n\n{"step": 2, bad\n{"step": 2}\n')
    code, err = run_cli(["train", *TINY, "--steps", "4", "--output", str(trained_run), "--resume"], capsys)
    assert code == 2 and "metrics.jsonl line 4 is not a JSON record" in err


def test_a_resume_inside_a_log_window_logs_what_the_uninterrupted_run_logs(tmp_path, capsys, monkeypatch):
    """The running training loss is saved with the checkpoint: the first record after a crash and resume is the
    mean the uninterrupted run logs, and each record's lr is the rate its step used."""
    import rmt.train.loop as loop

    settings = [*TINY, "--steps", "6", "--lr", "1e-3", "--lr-schedule", "linear", "--warmup", "2"]
    settings += ["--log-every", "3", "--checkpoint-every", "2"]
    assert main(["train", *settings, "--output", str(tmp_path / "whole")]) == 0

    train_step = loop._train_step

    def crash_at_step_five(*args, **kwargs):
        if args[5] == 4:  # the 0-based step: steps 1-4 ran and step 4 was checkpointed inside the 4-6 log window
            raise RuntimeError("simulated crash")
        return train_step(*args, **kwargs)

    monkeypatch.setattr(loop, "_train_step", crash_at_step_five)
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(["train", *settings, "--output", str(tmp_path / "parts")])
    monkeypatch.setattr(loop, "_train_step", train_step)
    assert main(["train", *settings, "--output", str(tmp_path / "parts"), "--resume"]) == 0

    def losses(run):
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"], r["lr"]) for r in records if "loss" in r]

    assert losses(tmp_path / "parts") == losses(tmp_path / "whole")
    # Warmup over steps 1-2, then a linear decay over 4 steps: step 3 used the peak, step 6 a quarter of it.
    assert [lr for _, _, lr in losses(tmp_path / "whole")] == pytest.approx([1e-3, 0.25e-3])


def test_training_without_clipping_still_logs_the_gradient_norm(tmp_path, capsys):
    """--grad-clip 0 leaves the gradients alone (the same run as a clip no step reaches) and logs their norm."""

    def records(clip, name):
        args = [*TINY, "--steps", "4", "--log-every", "2", "--grad-clip", clip, "--output", str(tmp_path / name)]
        assert main(["train", *args]) == 0
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [r for r in map(json.loads, lines) if "loss" in r]

    unclipped, unreached = records("0", "off"), records("1e9", "high")
    assert [(r["loss"], r["grad_norm"]) for r in unclipped] == [(r["loss"], r["grad_norm"]) for r in unreached]
    assert all(r["grad_norm"] > 0 for r in unclipped)


def test_a_resume_drops_the_tensorboard_events_logged_after_its_checkpoint(tmp_path, capsys, monkeypatch):
    """TensorBoard's purge_step does for the event files what the resume does for metrics.jsonl."""
    import rmt.train.loop as loop

    writers = []

    class RecordingWriter:
        def __init__(self, **kwargs):
            writers.append(kwargs)

        def add_scalar(self, *args, **kwargs):
            pass

        def close(self):
            pass

        flush = close

    monkeypatch.setattr(loop, "tensorboard_writer_class", lambda *args: RecordingWriter)
    args = [*TINY, "--checkpoint-every", "2", "--tensorboard", "--output", str(tmp_path / "run")]
    assert main(["train", *args, "--steps", "2"]) == 0
    assert main(["train", *args, "--steps", "4", "--resume"]) == 0
    assert [w["purge_step"] for w in writers] == [None, 3]


@pytest.mark.parametrize(
    ("command", "abbreviation"),
    [("train", "--overwr"), ("eval", "--overwr"), ("generate", "--max-new"), ("babilong", "--hay"), ("demo", "--thr")],
)
def test_abbreviated_flags_are_refused(command, abbreviation, tmp_path, capsys):
    """Each abbreviates one of its command's flags. An abbreviation would escape the check for flags a run does not
    read, and change meaning when a flag sharing its prefix is added."""
    with pytest.raises(SystemExit) as exit_info:
        main([command, abbreviation, "1", *(["--output", str(tmp_path)] if command in ("train", "babilong") else [])])
    assert exit_info.value.code == 2 and f"unrecognized arguments: {abbreviation}" in capsys.readouterr().err


def test_resume_compares_the_global_batch_across_process_counts(tmp_path):
    """A run of 2 processes x batch 2 resumed in one process needs batch 4 (or accumulation 2) to draw its data."""
    from dataclasses import asdict

    from rmt.train.checkpoint import GLOBAL_BATCH, ResumeSettingsError, _check_same_optimization
    from rmt.train.config import TrainConfig

    record = {"train_config": asdict(TrainConfig(batch_size=2)), "processes": 2}
    with pytest.raises(ResumeSettingsError) as refused:
        _check_same_optimization(record, TrainConfig(batch_size=2), tmp_path, processes=1)
    assert refused.value.changes == [(GLOBAL_BATCH, 4, 2)]
    _check_same_optimization(record, TrainConfig(batch_size=4), tmp_path, processes=1)
    _check_same_optimization(record, TrainConfig(batch_size=2, grad_accumulation=2), tmp_path, processes=1)


@pytest.mark.parametrize(
    ("output", "message"),
    [("", "--output is empty: give a folder"), ("notes.txt/run", "notes.txt is a file, not a folder")],
)
def test_train_refuses_an_output_it_cannot_use(output, message, tmp_path, capsys, monkeypatch):
    """An empty --output (an unset shell variable) would train into the working folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("keep me")
    code, err = run_cli(["train", *TINY, "--steps", "2", "--output", output], capsys)
    assert code == 2 and message in err and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_train_refuses_an_output_folder_it_cannot_write(tmp_path, capsys, monkeypatch):
    """Tested through os.access: as root (CI) a read-only folder is writable anyway."""
    import rmt.cli.common as common

    (tmp_path / "locked").mkdir()
    monkeypatch.setattr(common.os, "access", lambda path, mode: Path(path) != tmp_path / "locked")
    code, err = run_cli(["train", *TINY, "--steps", "2", "--output", str(tmp_path / "locked" / "run")], capsys)
    assert code == 2 and "locked is not writable" in err and not (tmp_path / "locked" / "run").exists()
    (tmp_path / "file").write_text("keep me")
    code, err = run_cli(["train", *TINY, "--steps", "2", "--output", str(tmp_path / "file")], capsys)
    assert code == 2 and "exists and is not a folder" in err


def test_train_refuses_dtype_for_a_random_backbone(tmp_path, capsys):
    code, err = run_cli(["train", *TINY, "--dtype", "bf16", "--output", str(tmp_path / "out")], capsys)
    assert code == 2 and "--dtype applies to a pretrained --model" in err and not (tmp_path / "out").exists()


def test_resume_refuses_another_task_and_a_step_count_behind_the_checkpoint(trained_run, capsys):
    task = TINY.index("--task") + 1
    other = [*TINY[:task], "reverse", "--task-size", "6", *TINY[task + 3 :]]  # the same model shapes
    code, err = run_cli(["train", *other, "--steps", "4", "--output", str(trained_run), "--resume"], capsys)
    assert code == 2 and "it trained on 'copy (task size 4)', this run reads 'reverse (task size 6)'" in err
    code, err = run_cli(["train", *TINY, "--steps", "1", "--output", str(trained_run), "--resume"], capsys)
    assert code == 2 and "it is at step 2, past this run's 1 steps" in err
    code, err = run_cli(["train", *TINY, "--steps", "4", "--output", str(trained_run), "--resume"], capsys)
    assert code == 0 and "the cosine learning-rate schedule now runs over 4 steps instead of 2" in err


def test_resume_refuses_detect_memorize_over_another_number_of_segments(tmp_path, capsys):
    """detect_memorize's segment size does not depend on --segments (its samples' length does), so neither the model
    check nor the data description told 2 segments from 5: the resume trained on other data."""
    detect = ["--task", "detect_memorize", "--task-size", "8", *TINY[6:], "--eval-batches", "1", "--steps"]
    output = ["--output", str(tmp_path / "run")]
    assert run_cli(["train", *detect, "2", "--segments", "2", *output], capsys)[0] == 0
    code, err = run_cli(["train", *detect, "4", "--segments", "5", *output, "--resume"], capsys)
    expected = "trained on 'detect_memorize (task size 8, 2 segments)', this run reads 'detect_memorize (task size 8"
    assert code == 2 and expected in err


def test_a_refused_resume_leaves_the_callers_model_as_it_was(trained_run):
    """The checks of the data, the step count and the curriculum run before the checkpoint is loaded into the model."""
    from rmt.data.sources import TaskSource
    from rmt.data.tasks import make_task
    from rmt.memory.pretrained import load_memory_model
    from rmt.train.config import TrainConfig
    from rmt.train.loop import train

    model = load_memory_model(trained_run / "model")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.5)  # unlike the checkpoint's weights
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    saved = json.loads((trained_run / "checkpoint" / "trainer_state.json").read_text())["train_config"]
    config = TrainConfig(**{**saved, "steps": 1})
    with pytest.raises(InputError, match="it is at step 2, past this run's 1 steps"):
        train(model, TaskSource(make_task("copy", length=4)), config, trained_run, True, None, "copy (task size 4)")
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())


def test_a_damaged_or_missing_part_of_the_accelerate_state_is_refused(trained_run, capsys):
    state = trained_run / "checkpoint" / "accelerate"
    (state / "random_states_0.pkl").write_bytes(b"truncated")
    code, err = run_cli(["train", *TINY, "--steps", "4", "--output", str(trained_run), "--resume"], capsys)
    assert code == 2 and "random_states_0.pkl is damaged" in err
    shutil.rmtree(state)
    code, err = run_cli(["train", *TINY, "--steps", "4", "--output", str(trained_run), "--resume"], capsys)
    assert code == 2 and "is incomplete: accelerate/ is missing" in err


def test_a_process_the_checkpoint_holds_no_random_state_for_is_told_so(trained_run, capsys):
    """A resume with more processes than the checkpoint's run: the extra process starts from fresh random numbers."""
    from types import SimpleNamespace

    from rmt.train.checkpoint import _check_accelerate_state

    state = trained_run / "checkpoint" / "accelerate"
    _check_accelerate_state(state, SimpleNamespace(process_index=0))
    assert capsys.readouterr().err == ""
    _check_accelerate_state(state, SimpleNamespace(process_index=1))
    err = capsys.readouterr().err
    assert f"note: {state} holds no random state for process 1 (it was saved by fewer processes)" in err


def test_a_metrics_record_without_a_step_is_refused_on_resume(trained_run, capsys):
    log = trained_run / "metrics.jsonl"
    log.write_text('{"step": 1}\n[1, 2]\n{"step": 2}\n')
    code, err = run_cli(["train", *TINY, "--steps", "4", "--output", str(trained_run), "--resume"], capsys)
    assert code == 2 and "metrics.jsonl line 2 is not a training log record" in err


def test_an_early_stop_is_logged_and_a_resume_follows_the_new_plateau_setting(tmp_path, capsys):
    """A held-out score that cannot improve (lr ~0) stops the run after 2 evaluations without gain; resumed with the
    same setting there is nothing to train, with a larger one it trains on to the new step count."""
    output = tmp_path / "run"
    base = [*TINY, "--eval-every", "1", "--lr", "1e-12", "--memory-lr", "1e-12", "--lr-schedule", "constant"]
    base += ["--warmup", "0", "--output", str(output)]
    code, err = run_cli(["train", *base, "--steps", "20", "--plateau-evals", "2"], capsys)
    stops = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines() if "stopped" in line]
    assert code == 0 and stops == [{"step": 3, "stopped": "plateau"}] and "stopped early at step 3" in err
    code, err = run_cli(["train", *base, "--steps", "20", "--plateau-evals", "2", "--resume"], capsys)
    assert code == 0 and "nothing to train" in err
    code, err = run_cli(["train", *base, "--steps", "20", "--plateau-evals", "5", "--resume"], capsys)
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert code == 0 and "training on" in err and max(r["step"] for r in records) == 6
    assert [r for r in records if "stopped" in r] == [{"step": 6, "stopped": "plateau"}]  # not the one at step 3
    code, err = run_cli(
        ["train", *base, "--steps", "20", "--plateau-evals", "2", "--plateau-min-steps", "8", "--overwrite"], capsys
    )
    stops = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines() if "stopped" in line]
    assert code == 0 and stops == [{"step": 8, "stopped": "plateau"}]


def test_an_early_stop_at_a_perfect_score_says_so_and_stays_stopped_on_resume():
    """A score of 1.0 within the plateau margin of the best so far stops the run as a ceiling, not a plateau."""
    from accelerate import Accelerator

    from rmt.train.config import TrainConfig
    from rmt.train.loop import TrainerState, _after_eval, _plateau_reason, _plateaued

    config = TrainConfig(plateau_evals=2)
    state = _after_eval(config, TrainerState(plateau_best=0.9998), 10, {"accuracy": 1.0}, Accelerator(cpu=True))
    assert state.stopped_early and state.evals_without_gain == 1
    assert _plateau_reason(config, state) == "held-out accuracy reached 1.0" and state.stop_reason == "ceiling"
    assert _plateaued(TrainConfig(plateau_evals=5), state, 10) and not _plateaued(TrainConfig(), state, 10)


GROWING = ["--task", "detect_memorize", "--segments", "3", *TINY[TINY.index("--family") :]]  # takes a curriculum


def test_a_resume_keeps_the_curriculum_up_to_its_stage_and_may_change_the_stages_after(tmp_path, capsys):
    """The checkpoint is in stage 2 of 0:1,2:2,4:3: a curriculum without that stage is refused in one line (it was
    an IndexError), one that moves a later stage trains on."""
    output = tmp_path / "run"
    base = [*GROWING, "--output", str(output)]
    assert run_cli(["train", *base, "--steps", "4", "--curriculum", "0:1,2:2,4:3"], capsys)[0] == 0
    code, err = run_cli(["train", *base, "--steps", "6", "--curriculum", "0:1", "--resume"], capsys)
    assert code == 2 and "it is in stage 2 of the curriculum 0:1,2:2,4:3, and this run's curriculum 0:1 changes" in err
    code, err = run_cli(["train", *base, "--steps", "6", "--curriculum", "0:1,2:3", "--resume"], capsys)
    assert code == 2 and "changes the stages up to it" in err
    code, err = run_cli(["train", *base, "--steps", "6", "--curriculum", "0:1,2:2,5:3", "--resume"], capsys)
    assert code == 0, err


def test_a_run_stopped_on_a_plateau_trains_on_when_a_resume_adds_curriculum_stages(tmp_path, capsys):
    """The plateau stop holds in the curriculum's last stage: a resume that adds a stage after it trains on into it
    (it said "nothing to train"); a change of the held-out batches is noted."""
    output = tmp_path / "run"
    base = [*GROWING, "--eval-every", "1", "--lr", "1e-12", "--memory-lr", "1e-12", "--lr-schedule", "constant"]
    base += ["--warmup", "0", "--output", str(output), "--steps", "20", "--plateau-evals", "2"]
    assert run_cli(["train", *base, "--curriculum", "0:2"], capsys)[0] == 0
    code, err = run_cli(["train", *base, "--curriculum", "0:2,6:3", "--resume", "--eval-batches", "3"], capsys)
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert code == 0 and "training on" in err and max(r["step"] for r in records) > 6
    assert "note: eval_batches changed, so the held-out scores from step 4 on come from other samples" in err


def test_backbones_without_the_head_a_wrapper_needs_are_refused_when_it_is_built():
    """ARMT on a model without an LM head, and the encoder wrapper on one without a sequence-classification head,
    were built and then crashed in forward (a TypeError on the missing head; an AttributeError on 'logits')."""
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaModel

    from rmt import ARMTForCausalLM

    llama = LlamaModel(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=4, max_position_embeddings=64))  # fmt: skip
    with pytest.raises(InputError, match="LlamaModel has no LM head: ARMTForCausalLM needs a causal LM"):
        ARMTForCausalLM(llama, RMTConfig(memory_kind="armt", num_memory_tokens=2, segment_size=8, d_mem=4))
    bert = BertModel(BertConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=4, max_position_embeddings=64))  # fmt: skip
    with pytest.raises(InputError, match="BertModel is not a sequence classifier"):
        RMTForSequenceClassification(bert, RMTConfig(mode="encoder", num_memory_tokens=2, segment_size=8))


def test_from_pretrained_takes_a_dtype_by_name_and_a_damaged_gguf_file_is_one_line(tmp_path):
    from rmt.build import pretrained_backbone

    model = RMTForCausalLM(tiny_decoder("llama"), RMTConfig(num_memory_tokens=2, segment_size=8))
    model.save_pretrained(tmp_path / "model")
    loaded = RMTForCausalLM.from_pretrained(tmp_path / "model", dtype="bf16")  # an AttributeError on torch.bf16
    assert loaded.backbone.dtype == torch.bfloat16
    with pytest.raises(InputError, match="unknown dtype 'bf17'"):
        RMTForCausalLM.from_pretrained(tmp_path / "model", dtype="bf17")
    (tmp_path / "damaged.gguf").write_bytes(b"GGUF" + b"\x00" * 20)
    with pytest.raises(InputError, match="cannot load the GGUF file damaged.gguf"):
        pretrained_backbone(str(tmp_path / "damaged.gguf"))


def test_transformers_load_report_is_held_back_unless_loading_fails_pointing_at_it(tmp_path, caplog, monkeypatch):
    """transformers printed its LOAD REPORT table (ANSI colours, one row per weight) before rmt's one-line refusal of
    the same weights; it is shown when transformers fails with an error that refers to it."""
    import logging

    from transformers import AutoModelForCausalLM

    from rmt.build import pretrained_backbone

    decoder = random_backbone("llama", vocab_size=VOCAB, num_layers=1, hidden_size=32, num_heads=4)
    decoder.save_pretrained(tmp_path / "edited")
    config = json.loads((tmp_path / "edited" / "config.json").read_text())
    (tmp_path / "edited" / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
    caplog.set_level(logging.WARNING, logger="transformers.modeling_utils")
    with pytest.raises(InputError, match="mismatched keys"):
        pretrained_backbone(str(tmp_path / "edited"))
    assert "LOAD REPORT" not in caplog.text

    config["num_hidden_layers"] = 0  # the files hold a layer the model does not use: said, since the table is not
    (tmp_path / "edited" / "config.json").write_text(json.dumps(config))
    with pytest.warns(RMTWarning, match=r"does not use, left out \(unexpected keys: model\.layers\.0\."):
        assert pretrained_backbone(str(tmp_path / "edited")).config.num_hidden_layers == 0
    import warnings

    from safetensors.torch import load_file, save_file
    from transformers import BertConfig, BertForSequenceClassification

    gpt2 = random_backbone("gpt2", vocab_size=VOCAB, num_layers=1, hidden_size=32, num_heads=4)
    gpt2.save_pretrained(tmp_path / "gpt2")  # with the masked_bias buffer files of older transformers hold: no warning
    weights = load_file(tmp_path / "gpt2" / "model.safetensors")
    weights["transformer.h.0.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(weights, tmp_path / "gpt2" / "model.safetensors", metadata={"format": "pt"})
    with warnings.catch_warnings():
        warnings.simplefilter("error", RMTWarning)
        pretrained_backbone(str(tmp_path / "gpt2"))
    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
    BertForSequenceClassification(BertConfig(vocab_size=VOCAB, num_labels=2, **shape)).save_pretrained(tmp_path / "b")
    with pytest.warns(RMTWarning, match=r"classifier head is for other classes .*classifier\.weight \[2, 32\]"):
        pretrained_backbone(str(tmp_path / "b"), mode="encoder", labels=["x", "y", "z"])

    def failing_load(*args, **kwargs):
        logging.getLogger("transformers.modeling_utils").warning("LlamaForCausalLM LOAD REPORT from: here\n| key |")
        raise RuntimeError("We encountered some issues ... look at the above report!")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", failing_load)
    with pytest.raises(RuntimeError, match="above report"):
        pretrained_backbone(str(tmp_path / "edited"))
    assert "LOAD REPORT from: here" in caplog.text


def test_a_backbone_folder_missing_weights_is_refused_not_started_at_random(tmp_path):
    """pretrained_backbone loaded a headless LlamaModel folder as a causal LM, or a folder missing one layer's weight,
    with random values in their place (transformers only logs a report) and `rmt train --model` trained on it. A new
    classifier head (and pooler) for an encoder loaded with labels is the one thing that may start at random."""
    from safetensors.torch import load_file, save_file
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaModel

    from rmt.build import pretrained_backbone

    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
    llama_config = LlamaConfig(vocab_size=VOCAB, max_position_embeddings=64, tie_word_embeddings=False, **shape)
    LlamaModel(llama_config).save_pretrained(tmp_path / "headless")
    with pytest.raises(InputError, match=r"lack weights that a LlamaForCausalLM needs.*missing keys: lm_head\.weight"):
        pretrained_backbone(str(tmp_path / "headless"))
    decoder = random_backbone("llama", vocab_size=VOCAB, num_layers=1, hidden_size=32, num_heads=4)
    decoder.save_pretrained(tmp_path / "decoder")
    assert pretrained_backbone(str(tmp_path / "decoder")) is not None  # complete: loads
    weights = load_file(tmp_path / "decoder" / "model.safetensors")
    del weights["model.layers.0.mlp.down_proj.weight"]
    save_file(weights, tmp_path / "decoder" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(InputError, match=r"missing keys: model\.layers\.0\.mlp\.down_proj\.weight"):
        pretrained_backbone(str(tmp_path / "decoder"))
    decoder.save_pretrained(tmp_path / "edited")
    config = json.loads((tmp_path / "edited" / "config.json").read_text())
    (tmp_path / "edited" / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
    with pytest.raises(  # transformers' bare RuntimeError ("look at the above report") before
        InputError, match=r"in other shapes .*mismatched keys: model\.layers\.0\.mlp\.down_proj\.weight \[32, 64\] in"
    ):
        pretrained_backbone(str(tmp_path / "edited"))

    BertModel(BertConfig(vocab_size=VOCAB, max_position_embeddings=64, **shape)).save_pretrained(tmp_path / "bert")
    classifier = pretrained_backbone(str(tmp_path / "bert"), mode="encoder", labels=["a", "b", "c"])
    assert classifier.config.num_labels == 3  # a new head for new classes
    with pytest.raises(InputError, match=r"missing keys: classifier\.bias.*pass labels to start a new classification"):
        pretrained_backbone(str(tmp_path / "bert"), mode="encoder")  # a baseline's classifier must come with its head
    weights = load_file(tmp_path / "bert" / "model.safetensors")
    del weights["encoder.layer.0.output.dense.weight"]
    save_file(weights, tmp_path / "bert" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(InputError, match=r"missing keys: bert\.encoder\.layer\.0\.output\.dense\.weight"):
        pretrained_backbone(str(tmp_path / "bert"), mode="encoder", labels=["a", "b", "c"])


def test_backbone_builders_refuse_what_they_cannot_build_in_one_line(tmp_path):
    """random_backbone accepted num_kv_heads that do not divide the heads, max_positions=0 and a pad id outside the
    vocabulary (each a crash in forward); pretrained_backbone(torch_dtype=...) came back in fp32 and an unknown
    family was transformers' raw ValueError; a memory that alone fills the positions advised "at most -4"."""
    from rmt.build import pretrained_backbone

    for kwargs, message in [
        ({"num_kv_heads": 3}, "num_heads=4 must be divisible by num_kv_heads=3"),
        ({"num_kv_heads": 0}, "num_kv_heads must be an integer > 0"),
        ({"max_positions": 0}, "max_positions must be an integer > 0"),
        ({"pad_token_id": VOCAB}, rf"pad_token_id must be a token id in \[0, {VOCAB}\)"),
    ]:
        with pytest.raises(InputError, match=message):
            random_backbone("llama", VOCAB, 1, 32, 4, **kwargs)
    with pytest.raises(InputError, match="num_kv_heads .* llama, mistral, qwen2 backbones only, not 'gpt2'"):
        random_backbone("gpt2", VOCAB, 1, 32, 4, num_kv_heads=2)
    random_backbone("llama", VOCAB, 1, 32, 4, num_kv_heads=2).save_pretrained(tmp_path / "llama")
    assert pretrained_backbone(str(tmp_path / "llama"), torch_dtype=torch.bfloat16).dtype == torch.bfloat16
    random_backbone("llama", VOCAB, 1, 32, 4).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    for unset in ({}, {"dtype": None}, {"torch_dtype": None}):  # fp32 unless asked otherwise, whatever the files hold
        assert pretrained_backbone(str(tmp_path / "bf16"), **unset).dtype == torch.float32
    assert pretrained_backbone(str(tmp_path / "bf16"), dtype="auto").dtype == torch.bfloat16  # the files' own
    with pytest.raises(InputError, match="dtype or torch_dtype, not both"):
        pretrained_backbone(str(tmp_path / "llama"), dtype="fp32", torch_dtype=torch.bfloat16)
    (tmp_path / "unknown").mkdir()
    (tmp_path / "unknown" / "config.json").write_text('{"model_type": "frobnicator"}')
    with pytest.raises(InputError, match="does not know its family 'frobnicator'"):
        pretrained_backbone(str(tmp_path / "unknown"))
    # Config values the family refuses were transformers' StrictDataclassError or a bare KeyError, naming no file.
    llama_config = json.loads((tmp_path / "llama" / "config.json").read_text())
    for name, edit, message in [
        ("heads", {"num_attention_heads": 5, "num_key_value_heads": 5}, "its config.json: .*not a multiple of"),
        ("rope", {"rope_parameters": {"rope_type": "nonsense", "rope_theta": 1}}, "no 'nonsense' known, which its"),
    ]:
        shutil.copytree(tmp_path / "llama", tmp_path / name)
        (tmp_path / name / "config.json").write_text(json.dumps({**llama_config, **edit}))
        with pytest.raises(InputError, match=f"cannot load a model from .*{name}'?: {message}"):
            pretrained_backbone(str(tmp_path / name))
    with pytest.raises(InputError, match="the memory alone takes them all: use fewer memory tokens"):
        RMTForCausalLM(random_backbone("gpt2", VOCAB, 1, 32, 4, 8), RMTConfig(num_memory_tokens=6, segment_size=4))


def test_a_model_saved_into_the_working_folder_and_a_demo_without_an_output(tmp_path, capsys, monkeypatch):
    """save_pretrained(".") made its temporary folder inside the target (Path(".").name is empty) and, into a
    folder holding files, copied it into itself until the name was too long; a swap of the working folder (or one
    above it) would leave the process in a deleted folder, so it is refused. `rmt demo --output ""` (an unset shell
    variable) wrote into the working folder."""
    model = RMTForCausalLM(tiny_decoder("llama"), RMTConfig(num_memory_tokens=2, segment_size=8))
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "notes.txt").write_text("mine")
    monkeypatch.chdir(tmp_path / "work")
    for folder in (".", "..", "../work"):  # replacing any of them would leave the process in a deleted folder
        with pytest.raises(InputError, match="holds the working folder"):
            model.save_pretrained(folder)
    assert os.listdir(".") == ["notes.txt"] and sorted(os.listdir("..")) == ["work"]
    model.save_pretrained("model")  # below it: fine
    assert torch.equal(RMTForCausalLM.from_pretrained("model").memory, model.memory)
    code, err = run_cli(["demo", "--output", "", "--no-progress"], capsys)
    assert (
        code == 2
        and "output folder is empty: give a folder" in err
        and sorted(os.listdir(".")) == ["model", "notes.txt"]
    )
    for flags, message in ((["--steps", "0"], "--steps must be at least 1"), (["--seed", "-1"], "--seed must be in")):
        code, err = run_cli(["demo", "--output", "demo", *flags, "--no-progress"], capsys)
        assert code == 2 and message in err and not os.path.exists("demo")
