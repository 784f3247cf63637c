"""BABILong by input length for `rmt eval --data babilong:TASK[,TASK...]`: the plan of a run (its flags checked and
their defaults filled in before the model is loaded), the resume of an interrupted run in --output (the flags, model
weights and file contents results.json records, compared with this command's), and the run itself, cell by cell.

`rmt.cli.evaluate` parses the flags and dispatches here; the evaluation proper is `rmt.eval.by_length`.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rmt.cli.common import check_seed, flag_with_value
from rmt.cli.data_flags import DEFAULT_SEED, check_background, load_background, parse_lengths
from rmt.errors import InputError, MissingFileError, MissingWeightsError
from rmt.files import check_output_folder, file_sha256

if TYPE_CHECKING:
    from rmt.memory.recurrent import RecurrentMemoryModel

DEFAULT_LENGTHS = "0k,1k,4k,16k"
DEFAULT_SAMPLES = 100
DEFAULT_METHODS = "memory"
DEFAULT_MAX_NEW_TOKENS = 8

# The flags a resumed run may set otherwise than the run it continues: where the files go and how the run goes, not
# which samples go to which model.
RESUME_FREE_FLAGS = ("command", "output", "overwrite", "resume", "threads", "device", "no_progress")
# The settings' fingerprint of the model's weights (checked once the model is loaded, not as a flag)
WEIGHTS_SETTING = "weights"
# The settings' fingerprints of what the path flags name besides the model ({flag: sha256}): the same path may hold
# another text or another baseline by the time a run is resumed
CONTENTS_SETTING = "contents"
# The settings' dtype of the model's weights as loaded (torch's name, "float32"): the fingerprint rounds to bf16, so an
# fp32 checkpoint and its bf16 copy share it, and a resume across them would mix answers of both precisions
DTYPE_SETTING = "dtype"
# The settings that are no flags, checked apart from the flags
NOT_FLAGS = (WEIGHTS_SETTING, CONTENTS_SETTING, DTYPE_SETTING)
# Flags that name files or folders: the same place spelled otherwise (./x, an absolute path) is the same flag
PATH_FLAGS = ("checkpoint", "haystack", "babilong_dir", "full_attention_model")


@dataclass
class ByLengthPlan:
    """A by-length run as `by_length_plan` checks it before the model is loaded; `rmt.cli.evaluate.run` adds the
    model's `weights`, `run_by_length` the --full-attention-model's fingerprint to `contents`."""

    tasks: list[str]
    lengths: list[str]  # length names (0k, 1k, ...) in the order --lengths gives them
    samples: dict[str, int]  # samples per length name
    methods: list[str]
    # --babilong-dir: the file of each (task, length) cell; None: samples generated (with --haystack, --seed)
    files: dict[tuple[str, str], Path] | None
    num_facts: int | tuple[int, int] | None  # --facts as read (None: each task's own range)
    max_new_tokens_given: bool  # --max-new-tokens given, not defaulted (refused for an encoder once it is loaded)
    earlier: dict[str, Any] | None  # --resume: the results in --output it continues (None without --resume)
    todo: list[tuple[str, str, str]]  # the (task, length, method) cells to compute: all, less those `earlier` holds
    # sha256 of what the path flags name ({flag: digest}), recorded in results.json as CONTENTS_SETTING
    contents: dict[str, str]
    # the model's weights' fingerprint, recorded as WEIGHTS_SETTING; None until `run` loads the model
    weights: str | None = None
    # the dtype of the model's weights ("float32", "bfloat16"), recorded as DTYPE_SETTING; None until it is loaded
    dtype: str | None = None


def parse_samples(text: str, lengths: list[str]) -> dict[str, int]:
    """Samples per length: '100' -> 100 for every length; '0k=100,1M=10' -> the counts named, and for the lengths not
    named the default (100, or a bare count given with them: '50,1M=10'), whatever the order. A named length must be
    one of `lengths`."""
    from rmt.data.babilong import length_name, parse_length

    default: int | None = None
    named: dict[str, int] = {}
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise InputError(f"--samples must look like 100 or 0k=100,1M=10, got {text!r}")
    for item in items:
        key, equals, value = item.partition("=")
        try:
            count = int(value if equals else key)
        except ValueError as err:
            raise InputError(f"--samples must look like 100 or 0k=100,1M=10, got {text!r}") from err
        if count <= 0:
            raise InputError(f"--samples must be > 0, got {text!r}")
        if not equals:
            if default is not None:
                raise InputError(f"--samples {text}: two counts for the lengths not named ({default} and {count})")
            default = count
            continue
        try:
            name = length_name(parse_length(key))
        except InputError as err:
            raise InputError(f"--samples {text}: {err}") from err
        if name in named:
            raise InputError(f"--samples {text}: two counts for length {name}")
        named[name] = count
    unknown = [name for name in named if name not in lengths]
    if unknown:
        raise InputError(
            f"--samples {text}: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not among --lengths "
            f"{','.join(lengths)}"
        )
    return {name: named.get(name, DEFAULT_SAMPLES if default is None else default) for name in lengths}


def by_length_plan(args: argparse.Namespace, tasks: list[str], num_facts: int | tuple[int, int] | None) -> ByLengthPlan:
    """The by-length settings, checked before the model is loaded: lengths, samples, methods, the window, the output
    folder, the --babilong-dir files. Fills in the defaults of the by-length flags."""
    from rmt.data.babilong import babilong_file, parse_length

    if args.resume and args.overwrite:
        raise InputError("--resume continues the run in --output, --overwrite replaces it: give one of them")
    if args.output is not None:
        check_output_folder(args.output)
        earlier = earlier_results(Path(args.output))
        if args.resume and "results.json" not in earlier:
            held = f" (with --overwrite: it holds {', '.join(earlier)})" if earlier else ""
            raise InputError(
                f"--resume: --output {args.output} holds no results.json to continue: run without --resume{held}"
            )
        if earlier and not args.overwrite and not args.resume:
            raise InputError(
                f"--output {args.output} holds the results of an earlier run ({', '.join(earlier)}): give another "
                "folder, --resume to continue it or --overwrite to replace it"
            )
    elif args.overwrite or args.resume:
        flag = "--overwrite replaces" if args.overwrite else "--resume continues"
        raise InputError(f"{flag} the results in --output: give --output")
    lengths = parse_lengths(args.lengths if args.lengths is not None else DEFAULT_LENGTHS)
    samples = parse_samples(args.samples if args.samples is not None else str(DEFAULT_SAMPLES), lengths)
    methods = parse_methods(args.methods if args.methods is not None else DEFAULT_METHODS)
    if "full_attention" not in methods:
        given = [
            flag_with_value(args, name)
            for name in ("window", "full_attention_model")
            if getattr(args, name) is not None
        ]
        if given:
            raise InputError(f"{', '.join(given)}: only for the full_attention method, which --methods does not name")
    if args.window is not None and args.window <= 0:
        raise InputError(f"--window must be > 0 (the tokens full_attention reads), got {args.window}")
    max_new_tokens_given = args.max_new_tokens is not None  # an encoder (known once loaded) has no use for it
    args.max_new_tokens = DEFAULT_MAX_NEW_TOKENS if args.max_new_tokens is None else args.max_new_tokens
    if args.max_new_tokens < 1:
        raise InputError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    files = None
    if args.haystack is not None and not args.babilong_dir and not any(parse_length(n) > 0 for n in lengths):
        raise InputError(f"{flag_with_value(args, 'haystack')}: no length above 0k reads background text")
    if args.babilong_dir:
        given = [flag_with_value(args, n) for n in ("haystack", "seed") if getattr(args, n) is not None]
        if num_facts is not None:
            given.insert(0, f"--facts {args.facts}")
        if given:
            raise InputError(
                f"{', '.join(given)}: these set generated samples; the files of --babilong-dir hold their own"
            )
        root = Path(args.babilong_dir)
        files = {(t, n): babilong_file(root, t, n) for t in tasks for n in lengths}
        if root.exists() and not root.is_dir():
            raise InputError(f"--babilong-dir {root} is a file, not a folder")
        if not root.is_dir():
            first = next(iter(files.values()))
            raise MissingFileError(f"--babilong-dir {root}: no such folder (it should hold {first}, ...)")
        missing = [str(path) for path in files.values() if not path.is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more of its {len(files)} files)" if len(missing) > 1 else ""
            raise MissingFileError(
                f"--babilong-dir {root}: no file {missing[0]}{more}; it needs DIR/data/<task>/<length>.json for every "
                "task and length, as `rmt babilong` writes them"
            )
    check_background(args.haystack)
    args.seed = DEFAULT_SEED if args.seed is None else args.seed
    check_seed(args.seed)
    todo = [(task, name, method) for name in lengths for task in tasks for method in methods]
    contents = _file_contents(args, files)
    earlier = None
    if args.resume:  # last: the flags are compared with the defaults filled in
        from rmt.eval.by_length import finished_cells

        earlier = _resumed_results(args, contents)
        finished = finished_cells(earlier, ["/".join(cell) for cell in todo])
        todo = [cell for cell in todo if "/".join(cell) not in finished]
    if args.output is None:  # once every check passed: a run of hours that saves nothing deserves a word first
        print(
            "note: no --output: the table is printed at the end and nothing is saved (--output DIR keeps "
            "results.json, predictions and plots after every cell, and an interrupted run continues with --resume)",
            file=sys.stderr,
        )
    return ByLengthPlan(
        tasks=tasks,
        lengths=lengths,
        samples=samples,
        methods=methods,
        files=files,
        num_facts=num_facts,
        max_new_tokens_given=max_new_tokens_given,
        earlier=earlier,
        todo=todo,
        contents=contents,
    )


def _file_contents(args: argparse.Namespace, files: dict[tuple[str, str], Path] | None) -> dict[str, str]:
    """sha256 of the --haystack files and of the --babilong-dir files the run reads, by flag: results.json records
    them, and a resume refuses files that changed at the same paths."""
    import hashlib

    named = {"haystack": [Path(p) for p in (args.haystack or "").split(",") if p]}
    named["babilong_dir"] = [files[cell] for cell in sorted(files)] if files else []
    contents = {}
    for flag, paths in named.items():
        if paths:
            digest = hashlib.sha256()
            for path in paths:  # each file's own digest: two files are not their concatenation
                digest.update(bytes.fromhex(file_sha256(path)))
            contents[flag] = digest.hexdigest()
    return contents


def parse_methods(text: str) -> list[str]:
    """The methods of a comma-separated list, each once, in the order given; at least one."""
    from rmt.eval.by_length import METHODS

    methods: list[str] = []
    for method in (m.strip() for m in text.split(",")):
        if method and method not in methods:
            methods.append(method)
    if not methods:
        raise InputError(f"--methods {text!r}: give at least one of {', '.join(METHODS)}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise InputError(f"--methods {text}: unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    return methods


def _resumed_results(args: argparse.Namespace, contents: dict[str, str]) -> dict[str, Any]:
    """The results in --output that --resume continues, with their answers; refused when results.json cannot be read
    or was made with other flags than this command's, or from files whose `contents` (`_file_contents`) changed."""
    from rmt.eval.by_length import read_results

    path = Path(args.output) / "results.json"
    try:
        earlier = read_results(args.output)
    except InputError as err:
        raise InputError(f"--resume: {err}") from err
    recorded = earlier.get("settings")
    if not isinstance(recorded, dict):
        raise InputError(
            f"--resume: {path} does not record the flags it was made with, so this command's cannot be checked "
            "against them: run without --resume, with --overwrite"
        )
    differing = _differing_flags(recorded, _settings(args))
    if differing:
        raise InputError(
            f"--resume: {path} was made with other flags ({'; '.join(differing)}): give the same flags, or run "
            "without --resume (--overwrite, or another --output)"
        )
    _check_same_contents(args, recorded, contents)
    return earlier


def _check_same_contents(args: argparse.Namespace, recorded: dict[str, Any], contents: dict[str, str]) -> None:
    """Refuse to resume from files that are not those the earlier run read: the same paths, other contents (results
    written before the contents were recorded are not checked)."""
    theirs = recorded.get(CONTENTS_SETTING)
    if not isinstance(theirs, dict):
        return
    changed = [flag for flag, digest in contents.items() if theirs.get(flag, digest) != digest]
    if changed:
        named = "; ".join(flag_with_value(args, flag) for flag in changed)
        raise InputError(
            f"--resume: {named}: not what {Path(args.output) / 'results.json'} was made from (the same paths, other "
            "contents): run without --resume (--overwrite, or another --output)"
        )


def _differing_flags(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`--flag: A in results.json, B in this command` for each flag whose value differs between an earlier run's
    settings and this command's, the flags that only say how the run goes aside; --lengths, --samples and --methods
    are compared as the run reads them."""
    theirs, ours = _as_read(recorded), _as_read(current)
    differing = []
    for name in dict.fromkeys([*recorded, *current]):
        if name in RESUME_FREE_FLAGS or name in NOT_FLAGS or theirs.get(name) == ours.get(name):
            continue
        if recorded.get(name) == current.get(name):  # --samples 3 read against other --lengths, which are named
            continue
        there, here = ("not given" if value is None else value for value in (recorded.get(name), current.get(name)))
        flag = "the checkpoint" if name == "checkpoint" else f"--{name.replace('_', '-')}"  # positional
        differing.append(f"{flag}: {there} in results.json, {here} in this command")
    return differing


def _as_read(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings with --lengths, --samples and --methods as the run reads them, so that a resumed run may spell
    them otherwise (a default given or left out, another order: the cells run by increasing length and are the same
    in any order of the methods), and paths as absolute paths from here (./model, model and /home/.../model are one
    place). A results.json edited so that they do not parse keeps them as written."""
    from rmt.data.babilong import parse_length

    settings = {**settings, **_absolute_paths(settings)}  # (results of before, with relative paths: from here)
    lengths, samples, methods = (settings.get(name) for name in ("lengths", "samples", "methods"))
    if not all(value is None or isinstance(value, str) for value in (lengths, samples, methods)):
        return settings
    try:
        names = parse_lengths(DEFAULT_LENGTHS if lengths is None else lengths)
        read = {
            "lengths": sorted(names, key=parse_length),
            "samples": parse_samples(str(DEFAULT_SAMPLES) if samples is None else samples, names),
            "methods": sorted(parse_methods(DEFAULT_METHODS if methods is None else methods)),
        }
    except InputError:
        return settings
    return {**settings, **read}


def _stamp(path: Path | None) -> tuple[int, int] | None:
    """(modification time, size) of a file, None when there is none."""
    try:
        status = path.stat() if path is not None else None
    except OSError:
        return None
    return None if status is None else (status.st_mtime_ns, status.st_size)


def weights_dtype(model: RecurrentMemoryModel) -> str:
    """The dtype of the model's floating-point weights as torch names it without its prefix ("float32"); a model
    holding several gives them all, joined by "+" in sorted order."""
    names = {str(p.dtype).removeprefix("torch.") for p in model.state_dict().values() if p.is_floating_point()}
    return "+".join(sorted(names))


def check_same_weights(args: argparse.Namespace, earlier: dict[str, Any], weights: str, dtype: str) -> None:
    """Refuse to resume with a model whose weights (their fingerprint) or their dtype are not those of the run that
    wrote results.json (a checkpoint trained further, or saved again in bf16, at the same path). Results written before
    the fingerprint or the dtype was recorded are not checked for it."""
    recorded = earlier.get("settings", {})
    made = f"{Path(args.output) / 'results.json'} was made with"
    if recorded.get(WEIGHTS_SETTING) not in (None, weights):
        raise InputError(
            f"--resume: the model at {args.checkpoint} is not the one {made} (its weights differ): run without "
            "--resume (--overwrite, or another --output)"
        )
    if recorded.get(DTYPE_SETTING) not in (None, dtype):
        held = f"is read in {dtype} (--dtype {args.dtype})" if args.dtype else f"holds {dtype} weights"
        flag = {"float32": "fp32", "bfloat16": "bf16"}.get(recorded[DTYPE_SETTING])
        # Given --dtype, the flag differs; without it, the checkpoint was saved again in another dtype.
        again = f"resume with --dtype {flag}" if args.dtype and flag else "resume with the checkpoint it read"
        raise InputError(
            f"--resume: the model at {args.checkpoint} {held}, and {made} {recorded[DTYPE_SETTING]} ones: run "
            f"without --resume (--overwrite, or another --output), or {again}"
        )


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """The command's flags as results.json keeps them (values of plain types: the command is the rest), paths made
    absolute: a resume from another folder then compares the places the first run read."""
    plain = (str, int, float, bool, type(None))
    settings = {"command": "rmt eval", **{k: v for k, v in vars(args).items() if isinstance(v, plain)}}
    return {**settings, **_absolute_paths(settings)}


def _absolute_paths(settings: dict[str, Any]) -> dict[str, str]:
    """The path flags among `settings`, each path absolute (a comma-separated list path by path); a relative one is
    taken from the current folder."""
    return {
        name: ",".join(os.path.realpath(part) for part in value.split(","))
        for name in PATH_FLAGS
        if isinstance(value := settings.get(name), str)
    }


def earlier_results(folder: Path) -> list[str]:
    """The result files of an earlier by-length run in `folder`."""
    from rmt.eval.by_length import RESULT_FILES

    return [name for name in RESULT_FILES if (folder / name).exists()]


def _check_same_tokens(name: str, tokenizer: Any, tasks: list[str]) -> None:
    """Refuse a --full-attention-model whose own tokenizer writes the samples' words as other ids than the
    checkpoint's, which writes them for every method: it would read ids that mean other tokens to it."""
    from rmt.build import pretrained_tokenizer
    from rmt.data.babilong import answer_labels

    try:
        own = pretrained_tokenizer(name)
    except InputError:  # a folder of weights alone: nothing to compare with (its vocabulary size was checked)
        return
    words = sorted({word for task in tasks for word in answer_labels(task)})
    probe = "Mary went to the kitchen. Where is Mary?\nAnswer: " + " ".join(words)
    if tokenizer(probe, add_special_tokens=False).input_ids != own(probe, add_special_tokens=False).input_ids:
        raise InputError(
            f"--full-attention-model {name} has another tokenizer than the checkpoint's, which writes the samples "
            "for every method (the same text gives other ids): give a model with the checkpoint's tokenizer"
        )


def _check_baseline(name: str, baseline: Any, model: Any, tokenizer: Any, mode: str) -> None:
    """Refuse a --full-attention-model that cannot read the checkpoint tokenizer's ids or, for an encoder, does not
    answer with the checkpoint's classes: found only at its first cell, after the memory cells are written."""
    vocabulary = baseline.get_input_embeddings().weight.shape[0]
    if vocabulary < len(tokenizer):
        raise InputError(
            f"--full-attention-model {name} embeds {vocabulary} token ids, fewer than the {len(tokenizer)} of the "
            "checkpoint's tokenizer, which writes the samples: give a model with that tokenizer"
        )
    if mode == "encoder":
        ours, theirs = (
            [config.id2label[i] for i in range(config.num_labels)]
            for config in (model.backbone.config, baseline.config)
        )
        if ours != theirs:
            raise InputError(
                f"--full-attention-model {name} answers with the classes {theirs}, the checkpoint with {ours}: give a "
                "classifier trained on the same answers"
            )


def _full_attention_window(args: argparse.Namespace, backbone: Any, mode: str) -> None:
    """Refuse a --window the full-attention backbone cannot read, or one that leaves a decoder no room to answer."""
    from rmt.backbones import max_positions

    positions = max_positions(backbone)
    limit = None if positions is None else positions - 2 if mode == "encoder" else positions
    if args.window is None and limit is None:
        raise InputError("the full-attention backbone has no fixed window: give --window")
    if args.window is not None and limit is not None and args.window > limit:
        what = (
            f"{positions} positions, 2 of them for [CLS] and [SEP]" if mode == "encoder" else f"{positions} positions"
        )
        raise InputError(
            f"--window {args.window}: the full-attention backbone reads at most {limit} tokens at once ({what}); "
            f"give --window 1..{limit}"
        )
    window = args.window if args.window is not None else limit
    if mode == "decoder" and window <= args.max_new_tokens:
        if args.window is None:  # the backbone's own window: only the answer's length can give
            raise InputError(
                f"--max-new-tokens {args.max_new_tokens}: the full-attention backbone's window of {window} tokens "
                "holds the question and the answer; give fewer --max-new-tokens"
            )
        raise InputError(
            f"--window {window}: a decoder's window holds the question and the answer's --max-new-tokens "
            f"{args.max_new_tokens} tokens; give a --window above {args.max_new_tokens} (or fewer --max-new-tokens)"
        )


def run_by_length(args: argparse.Namespace, model: RecurrentMemoryModel, plan: ByLengthPlan) -> int:
    from tqdm.auto import tqdm

    from rmt.build import pretrained_backbone, pretrained_tokenizer
    from rmt.data.babilong import build_dataset, check_file_cell, load_babilong, parse_length
    from rmt.data.collate import QACollator, check_tokenizer
    from rmt.eval.by_length import evaluate_by_length, format_table
    from rmt.memory.memory_file import sampled_weights_fingerprint

    tasks, lengths, samples, methods = plan.tasks, plan.lengths, plan.samples, plan.methods
    num_facts = plan.num_facts
    tokenizer = pretrained_tokenizer(args.checkpoint)
    check_tokenizer(tokenizer, model.backbone.get_input_embeddings().weight.shape[0])
    mode = model.config.mode
    if mode == "encoder" and plan.max_new_tokens_given:
        raise InputError(f"--max-new-tokens: {args.checkpoint} is an encoder, which answers with a class, not tokens")
    files = None
    haystack = None
    if plan.files is not None:
        files = {cell: load_babilong(path) for cell, path in plan.files.items()}
        for (task, name), cell_samples in files.items():
            check_file_cell(cell_samples, task, name, plan.files[(task, name)])
    elif any(parse_length(n) > 0 for n in lengths):
        haystack = load_background(args.haystack)
    baseline = None
    if args.full_attention_model and "full_attention" in methods:
        try:
            # In the memory model's precision: a bf16 checkpoint against an fp32 baseline would compare precisions.
            dtype = model.backbone.get_input_embeddings().weight.dtype
            baseline = pretrained_backbone(args.full_attention_model, mode=mode, dtype=dtype).to(model.device).eval()
        except MissingWeightsError as err:
            if not err.head_only:
                raise
            raise InputError(
                f"--full-attention-model {args.full_attention_model} has no classification head: it must be a "
                "classifier trained on the same answers"
            ) from err
        _check_baseline(args.full_attention_model, baseline, model, tokenizer, mode)
        _check_same_tokens(args.full_attention_model, tokenizer, tasks)
        plan.contents["full_attention_model"] = sampled_weights_fingerprint(baseline)
    if plan.earlier is not None:  # said once every check of the resume passed
        _check_same_contents(args, plan.earlier["settings"], plan.contents)
        cells = len(tasks) * len(lengths) * len(methods)
        kept = cells - len(plan.todo)
        print(
            f"resuming {Path(args.output) / 'results.json'}: {kept} of {cells} cells kept, {len(plan.todo)} to compute",
            file=sys.stderr,
        )
    if "full_attention" in methods:
        _full_attention_window(args, baseline if baseline is not None else model.backbone, mode)
    if files is None:
        # Every sample is built (and dropped) before the first cell runs, so that one that cannot be built (a story
        # longer than its length, too little background) or an encoder cannot answer is refused before anything is
        # written. Building costs little next to reading the samples through the model.
        labels = None
        if mode == "encoder":
            config = model.backbone.config
            labels = QACollator(tokenizer, mode, [config.id2label[i] for i in range(config.num_labels)])
        pending = {(task, name) for task, name, _ in plan.todo}  # a resumed run's kept cells need no samples
        cells = [
            (task, name) for name in sorted(lengths, key=parse_length) for task in tasks if (task, name) in pending
        ]
        for task, name in tqdm(cells, desc="checking samples", disable=args.no_progress, leave=False):
            built = build_dataset(task, name, samples[name], tokenizer, haystack, seed=args.seed, num_facts=num_facts)
            if labels is not None:
                labels.check_records([sample.to_dict() for sample in built], f"the {task} {name} samples")
            del built
    results_file = Path(args.output) / "results.json" if args.output else None
    before = _stamp(results_file)  # to tell, on an interrupt, whether this run wrote it
    try:
        results = evaluate_by_length(
            model,
            tokenizer,
            tasks,
            lengths,
            samples,
            haystack=haystack,
            seed=args.seed,
            methods=methods,
            window=args.window,
            max_new_tokens=args.max_new_tokens,
            output_dir=args.output,
            progress=not args.no_progress,
            files=files,
            full_attention_backbone=baseline,
            num_facts=num_facts,
            settings={
                **_settings(args),
                WEIGHTS_SETTING: plan.weights,
                CONTENTS_SETTING: plan.contents,
                DTYPE_SETTING: plan.dtype,
            },
            earlier=plan.earlier,
        )
    except KeyboardInterrupt:
        if results_file is not None and (_stamp(results_file) != before or args.resume):
            print(
                f"{results_file} keeps the cells measured so far: the same command with --resume (not --overwrite) "
                "computes the others",
                file=sys.stderr,
            )
        elif results_file is not None and results_file.is_file():  # an --overwrite run stopped before its first cell
            print(f"{results_file} is still the earlier run's: this run wrote no cell", file=sys.stderr)
        raise
    print(format_table(results))
    if args.output:
        print(f"\nwrote {Path(args.output) / 'results.json'}, predictions.jsonl, table.md and plots")
    return 0
