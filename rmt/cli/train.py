"""`rmt train`: train a memory model on a synthetic task, a data file or generated BABILong samples.

    rmt train --task copy --task-size 24 --segments 3 --family llama --memory-tokens 24 --output runs/copy
    rmt train --model minilm --data babilong:qa1 --segment-size 128 --memory-tokens 10 \\
        --curriculum 0:1,1000:2,2000:4 --curriculum-accuracy 0.9 --output runs/qa1
    rmt train --model path/to/hf-model --data train.jsonl --segment-size 512 --output runs/mine
    rmt train ... --resume          # continue exactly from OUTPUT/checkpoint
    rmt train ... --overwrite       # replace the run already in OUTPUT

The backbone is a pretrained model (`--model`: smollm2, minilm, a folder, a .gguf file, a hub id, or an rmt
checkpoint to train further) or, for synthetic tasks, a random model of --family sized by --layers/--hidden/--heads.
An encoder backbone (BERT, RoBERTa) answers with a class; a decoder generates its answer.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rmt.cli.common import (
    DEFAULT_SEGMENTS,
    FACTS_HELP,
    TASK_SIZE_DEFAULTS,
    add_runtime_arguments,
    add_task_arguments,
    apply_runtime,
    flags_given,
    task_from_flags,
)
from rmt.cli.data_flags import (
    BABILONG_PREFIX,
    babilong_tasks,
    check_background,
    check_data_files,
    facts_setting,
    load_background,
    text_collator,
)
from rmt.cli.options import add_config_arguments, config_from_args, flag_name, name_flag
from rmt.config import RMTConfig
from rmt.errors import InputError, MissingWeightsError
from rmt.files import check_output_folder
from rmt.train.config import TrainConfig

if TYPE_CHECKING:
    from rmt.memory.recurrent import RecurrentMemoryModel

MEMORY_FLAGS = {
    "num_memory_tokens": "--memory-tokens",
    "memory_kind": "--memory",
    "bptt_depth": "--bptt-depth",
    "write_init": "--write-init",
    "memory_positions": "--memory-positions",
    "loss_aggregation": "--loss-aggregation",
    "d_mem": "--d-mem",
    "read_memory_only": "--read-memory-only",
    "xl_cache_tokens": "--xl-cache-tokens",
}
MEMORY_SKIP = ("segment_size", "mode", "cls_token_id", "sep_token_id")
TRAIN_FLAGS = {"learning_rate": "--lr", "memory_learning_rate": "--memory-lr", "warmup_steps": "--warmup"}
TRAIN_SKIP = ("progress",)
TRAIN_DEFAULTS_SHOWN = {"curriculum_accuracy": "off: each stage starts at its STEP"}
# Library checks on values that `build_setup` passes on from these flags: their messages start with the field's name.
SETUP_FLAGS = {
    "num_segments": "--segments",
    "max_length": "--max-length",
    "facts_before_last": "--facts-before-last",
    "distractors": "--distractors",
}
DEFAULT_SEGMENT_SIZE = 128
DECODER_RESERVE = 16  # tokens of a BABILong decoder sample kept for the answer cue, the answer and EOS
DEFAULT_FACTS_BEFORE_LAST = 0.5
DEFAULT_VALIDATION_SAMPLES = 200


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train",
        allow_abbrev=False,
        help="train a memory model (synthetic task, data file, or BABILong)",
        description=__doc__.split("\n\n")[0] + " Checkpoints go to OUTPUT/checkpoint; --resume continues from it.",
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--output",
        required=True,
        help="output folder for metrics.jsonl, checkpoint/, model/, best/ (one that holds a run needs --resume or "
        "--overwrite)",
    )
    data = parser.add_argument_group("data")
    add_task_arguments(data, default_task=None, segments_given=True)
    data.add_argument(
        "--data",
        default=None,
        help="a data file (.jsonl/.json/.csv/.parquet with input/question/target, or text; .txt) or "
        "babilong:TASK[,TASK...] for BABILong samples generated on the fly (qa1..qa5); default: the synthetic --task",
    )
    data.add_argument("--validation-data", default=None, help="held-out records (default: split off --data)")
    data.add_argument(
        "--validation-samples",
        type=int,
        default=DEFAULT_VALIDATION_SAMPLES,
        help="records split off --data for validation (default: %(default)s)",
    )
    data.add_argument("--streaming", action="store_true", help="stream --data instead of loading it (huge files)")
    data.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="text data: cut documents to this many tokens (default: whole documents)",
    )
    data.add_argument(
        "--haystack", default=None, help="BABILong background text files, comma-separated (default: built-in corpus)"
    )
    data.add_argument(
        "--facts-before-last",
        type=float,
        default=DEFAULT_FACTS_BEFORE_LAST,
        help="BABILong: fraction of training samples whose facts all lie before the last segment, so that answering "
        "needs the memory (default: %(default)s)",
    )
    data.add_argument(
        "--distractors",
        type=float,
        default=0.0,
        help="BABILong: fraction of training samples whose background is book sentences that name the answers "
        "(rooms), each swapped for a random one, so that the memory learns to ignore them outside facts "
        "(default: %(default)s)",
    )
    data.add_argument("--facts", default=None, help=FACTS_HELP)
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        default=None,
        help="pretrained backbone: smollm2, minilm, a model folder, a .gguf file, a hub id, or an rmt checkpoint "
        "(trained on whole, with its own memory settings and segment size) (default: a random backbone of --family)",
    )
    model.add_argument(
        "--dtype",
        default="fp32",
        choices=("fp32", "bf16"),
        help="--model's weights' dtype (default: fp32). bf16 weights train without an fp32 copy, so updates below "
        "bf16's precision are lost; --mixed-precision bf16 computes in bf16 and keeps fp32 weights",
    )
    model.add_argument(
        "--family",
        default="gpt2",
        choices=["gpt2", "llama", "mistral", "qwen2", "gpt_neox"],
        help="random backbone family (default: %(default)s)",
    )
    model.add_argument("--layers", type=int, default=4, help="random backbone layers (default: %(default)s)")
    model.add_argument("--hidden", type=int, default=128, help="random backbone hidden size (default: %(default)s)")
    model.add_argument("--heads", type=int, default=4, help="random backbone attention heads (default: %(default)s)")
    memory = parser.add_argument_group("memory (RMTConfig)")
    memory.add_argument(
        "--segment-size",
        type=int,
        default=None,
        help="tokens per segment for data files and BABILong (synthetic tasks: from --segments) (default: "
        f"{DEFAULT_SEGMENT_SIZE}; for an rmt checkpoint --model, the checkpoint's own)",
    )
    add_config_arguments(memory, RMTConfig, MEMORY_FLAGS, skip=MEMORY_SKIP)
    training = parser.add_argument_group("training (TrainConfig)")
    add_config_arguments(
        training, TrainConfig, TRAIN_FLAGS, skip=TRAIN_SKIP, defaults={"steps": 2000}, shown=TRAIN_DEFAULTS_SHOWN
    )
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint (an error if none)")
    parser.add_argument("--overwrite", action="store_true", help="replace the run already in --output")
    add_runtime_arguments(parser)
    parser.set_defaults(handler=run)


@dataclass
class Setup:
    """What a training run needs besides its TrainConfig."""

    model: Any
    source: Any
    description: str
    eval_segments: int | None
    tokenizer: Any = None


def run(args: argparse.Namespace) -> int:

    from rmt.train.checkpoint import GLOBAL_BATCH, ModelMismatchError, ResumeSettingsError, checkpoint_exists
    from rmt.train.evaluation import evaluate
    from rmt.train.loop import (
        checkpoint_step,
        default_accelerator,
        run_entries,
        save_model,
        tensorboard_writer_class,
        train,
    )

    device = apply_runtime(args)
    check_output_folder(args.output)
    output = Path(args.output)
    if args.resume and args.overwrite:
        raise InputError("give --resume (continue the run in --output) or --overwrite (replace it), not both")
    existing, resumable = run_entries(output), checkpoint_exists(output)
    if args.resume and not resumable:
        start = (  # a run stopped before its first checkpoint left other files, which a new run must replace
            f"start it again with --overwrite (it holds {', '.join(existing)})" if existing else "run without --resume"
        )
        raise InputError(f"--resume: no checkpoint in {output / 'checkpoint'} to continue from: {start}")
    if existing and not (args.resume or args.overwrite):
        if resumable:
            choices = "give --resume to continue it, --overwrite to replace it, or another --output"
        else:  # stopped before its first checkpoint
            choices = "it has no checkpoint to resume; give --overwrite to replace it, or another --output"
        raise InputError(f"--output {output} already holds a run ({', '.join(existing)}): {choices}")
    if args.task is None:  # (both: the conflict is refused as such below)
        check_data_files(args.data, args.validation_data if babilong_tasks(args.data or "") is None else None)
    refuse_ignored_flags(args)
    check_background(args.haystack)  # before the model loads
    config = config_from_args(TrainConfig, args, TRAIN_FLAGS, progress=not args.no_progress)
    if config.tensorboard:
        tensorboard_writer_class("--tensorboard")  # refused now, not once the model is built
    setup = build_setup(args, config)
    accelerator = default_accelerator(config, cpu=device.type == "cpu")
    if args.dtype == "bf16" and accelerator.is_main_process:
        print(
            "note: --dtype bf16 trains bf16 weights with no fp32 copy: an update smaller than a weight's bf16 "
            "precision is lost, and at small learning rates most are; --mixed-precision bf16 with --dtype fp32 "
            "computes in bf16 and keeps fp32 weights",
            file=sys.stderr,
        )
    tokenizer = setup.tokenizer

    def save_tokenizer(folder: Path) -> None:
        if tokenizer is not None:
            tokenizer.save_pretrained(Path(folder) / "backbone")

    resumed_from = checkpoint_step(output) if args.resume else None
    try:
        train(
            setup.model,
            setup.source,
            config,
            output,
            resume=args.resume,
            accelerator=accelerator,
            description=setup.description,
            save_extras=save_tokenizer,
            overwrite=args.overwrite,  # the old run goes once start-up succeeded
            data_contents=_data_contents(args, accelerator),
        )
    except ResumeSettingsError as err:  # the same refusal, in the flags' names
        names = {key: flag_name(key, TRAIN_FLAGS) for key, _, _ in err.changes}
        names[GLOBAL_BATCH] = "global batch (--batch-size x --grad-accumulation x processes)"
        raise err.named(names) from None
    except ModelMismatchError as err:
        names = {key: flag_name(key, MEMORY_FLAGS) for key, _, _ in err.changes if " " not in key}
        if args.data is None:  # a synthetic task's segment size follows from its size and segments
            names["segment_size"] = "segment size (from --task-size and --segments)"
        raise err.named(names) from None
    if resumed_from is not None and checkpoint_step(output) == resumed_from and accelerator.is_main_process:
        # Saved all the same: model/ may be older than the checkpoint (a crash between the two writes).
        print(
            f"note: the run in {output} had finished at step {resumed_from} (all its steps done, or stopped early): "
            f"nothing was left to train; {output / 'model'} is written again from its checkpoint",
            file=sys.stderr,
        )
    save_model(setup.model, output / "model", accelerator, config, save_tokenizer)
    processes = None if config.fsdp else accelerator  # as in training: FSDP's processes each run every batch
    with accelerator.autocast():  # in the precision of the held-out scores logged during training
        scores = evaluate(
            setup.model,
            setup.source,
            config.eval_batches,
            config.eval_batch_size,
            setup.eval_segments,
            processes,
            config.progress,
        )
    if accelerator.is_main_process:
        # A fixed synthetic task spans --segments segments (its source takes no segment count).
        synthetic = args.segments if args.segments is not None else DEFAULT_SEGMENTS
        segments = setup.eval_segments or (synthetic if args.data is None else None)
        print(json.dumps({"data": setup.description, "segments": segments, **scores}, indent=2))
        print(f"model saved to {output / 'model'}")
        if config.save_best:
            print(_best_model_line(output))
    accelerator.wait_for_everyone()
    accelerator.end_training()  # close the process group while every process is still here, not at interpreter exit
    return 0


def _data_contents(args: argparse.Namespace, accelerator: Any) -> dict[str, str]:
    """sha256 of each file the data is read from, by flag and file name (as the run's description names them; the
    second of two background files of one name by its place too): a resume refuses files of the same names with other
    contents (moved files are read the same). Read by the main process alone and given to the others, so that they
    all decide alike."""
    from accelerate.utils import broadcast_object_list

    from rmt.files import file_sha256

    contents: list[dict[str, str] | None] = [None]
    if accelerator.is_main_process:
        named = [("--data", args.data), ("--validation-data", args.validation_data)]
        named += [("--haystack", path) for path in (args.haystack or "").split(",") if path]
        files = [(flag, path) for flag, path in named if path is not None and not path.startswith(BABILONG_PREFIX)]
        contents[0] = {}
        for number, (flag, path) in enumerate(files, 1):
            key = f"{flag} {Path(path).name}"
            contents[0][f"{key} (file {number})" if key in contents[0] else key] = file_sha256(path)
    if accelerator.num_processes > 1:
        broadcast_object_list(contents)
    return contents[0]


def _best_model_line(output: Path) -> str:
    """Where --save-best put the best model, and its held-out score."""
    from rmt.train.loop import BEST_DIR, BEST_RECORD

    record_file = output / BEST_DIR / BEST_RECORD
    if not record_file.is_file():
        return "no best model: no held-out evaluation ran at the final number of segments"
    record = json.loads(record_file.read_text())
    return (
        f"best model (held-out {record['metric']} {record['score']:.4f} at step {record['step']}) saved to "
        f"{output / BEST_DIR}"
    )


def refuse_ignored_flags(args: argparse.Namespace) -> None:
    """Refuse a flag given on the command line that this kind of run does not read: ignored, it would change nothing
    while the user thinks it did."""
    tasks = babilong_tasks(args.data or "")
    data_file = args.data is not None and not tasks
    saved = _checkpoint_config(args.model)  # an rmt checkpoint keeps its own memory kind
    armt = (saved.memory_kind if saved is not None else args.memory_kind) == "armt"
    encoder = args.model is not None and _mode_of(args.model) == "encoder"
    score_read = args.curriculum_accuracy is not None or args.plateau_evals is not None or args.save_best
    unread = (
        (("--family", "--layers", "--hidden", "--heads"), args.model is not None, "a random backbone (no --model)"),
        (("--dtype",), args.model is None, "a pretrained --model (a random backbone is built in fp32)"),
        (("--task-size",), args.data is not None, "synthetic tasks (--task)"),
        (("--segment-size",), args.data is None, "data files and BABILong (synthetic tasks: from --segments)"),
        (
            ("--validation-data", "--validation-samples", "--streaming", "--max-length"),
            not data_file,
            "a data file (--data FILE)",
        ),
        (("--haystack", "--facts-before-last"), not tasks, "generated BABILong data (--data babilong:TASK)"),
        (
            ("--lora-rank", "--lora-alpha", "--lora-dropout", "--lora-targets"),
            args.trainable != "lora",
            "--trainable lora",
        ),
        (("--d-mem", "--armt-write-norm"), not armt, "ARMT (--memory armt)"),
        (("--write-init", "--memory-positions", "--memory-write-scale"), armt, "RMT memory tokens (--memory rmt)"),
        (("--min-lr-factor",), args.lr_schedule != "cosine", "the cosine schedule (--lr-schedule cosine)"),
        (
            ("--lr",),  # with --trainable memory only the memory group trains, at --memory-lr where that is given
            args.trainable == "memory" and args.memory_learning_rate is not None,
            "runs that train backbone weights (--trainable all or lora); the memory trains at --memory-lr",
        ),
        (("--encoder-memory-input", "--encoder-memory-init"), not encoder, "an encoder --model (such as minilm)"),
        (
            ("--write-init", "--memory-positions", "--memory-write-scale", "--loss-aggregation", "--read-memory-only"),
            encoder,
            "decoders (an encoder writes its memory as it reads it, and its loss is its answer's)",
        ),
        (
            ("--curriculum-metric",),
            not score_read,
            "runs that read the held-out score (--curriculum-accuracy, --plateau-evals, --save-best)",
        ),
    )
    for flags, ignored, scope in unread:
        given = flags_given(args, flags) if ignored else []
        if given:
            raise InputError(f"{given[0]} applies to {scope} only: here it would be ignored")


def build_setup(args: argparse.Namespace, config: TrainConfig) -> Setup:
    """The model and data source that the flags describe: the same flags and --seed build the same model (a new
    classifier head, the memory parameters)."""
    from accelerate.utils import set_seed

    segments_given = args.segments is not None
    args = argparse.Namespace(**{**vars(args), "segments": args.segments if segments_given else DEFAULT_SEGMENTS})
    _check_sizes(args)
    set_seed(args.seed)
    tasks = babilong_tasks(args.data or "")
    num_facts = facts_setting(args.facts, tasks, "--data babilong:TASK")  # refused without BABILong data
    if args.distractors and tasks is None:
        raise InputError("--distractors draws BABILong backgrounds: it needs --data babilong:TASK")
    if args.data is not None and tasks is None:  # a data file: its records have their own length
        for flag, given in (("--curriculum", config.curriculum is not None), ("--segments", segments_given)):
            if given:
                raise InputError(
                    f"{flag} sets the number of segments of synthetic tasks and generated BABILong data "
                    f"(--data babilong:TASK) only; the records of {args.data} have their own length"
                )
    if tasks and segments_given and config.curriculum:
        raise InputError(
            "--segments sets the length of BABILong samples when there is no --curriculum; with one, its stages "
            "do: drop --segments"
        )
    try:
        if args.data is None:
            return _task_setup(args, config)
        if args.task is not None:
            raise InputError("give either --task (synthetic) or --data, not both")
        if args.model is None:
            raise InputError("--data needs a pretrained --model (its tokenizer reads the text)")
        return _text_setup(args, config, tasks, num_facts)
    except InputError as err:
        message = name_flag(str(err), list(SETUP_FLAGS), SETUP_FLAGS)
        if message == str(err):
            raise
        raise InputError(message) from err


def _check_sizes(args: argparse.Namespace) -> None:
    """Refuse sizes that no model or data can have, naming their flags."""
    if args.segments < 1:  # the library's name for it too: num_segments
        raise InputError(f"--segments: num_segments must be an integer >= 1, got {args.segments}")
    positive = {
        "--segment-size": args.segment_size,
        "--layers": args.layers,
        "--hidden": args.hidden,
        "--heads": args.heads,
        "--validation-samples": args.validation_samples,
    }
    for flag, value in positive.items():
        if value is not None and value <= 0:
            raise InputError(f"{flag} must be > 0, got {value}")


def memory_config(args: argparse.Namespace, segment_size: int, **fields: Any) -> RMTConfig:
    """The RMTConfig of every memory flag given (each RMTConfig field with a flag), with segment_size and `fields`."""
    return config_from_args(RMTConfig, args, MEMORY_FLAGS, segment_size=segment_size, **fields)


def _task_setup(args: argparse.Namespace, config: TrainConfig) -> Setup:
    from rmt.build import memory_model, random_backbone
    from rmt.data.sources import TaskSource
    from rmt.data.tasks import make_task

    name = args.task or "copy"
    task = task_from_flags(name, args.task_size, args.segments)
    size = TASK_SIZE_DEFAULTS.get(name) if args.task_size is None else args.task_size
    description = name if size is None else f"{name} (task size {size})"  # a resume on another task is refused
    if name == "detect_memorize" and not config.curriculum:  # its length is its number of segments, not its size
        description = f"{name} (task size {size}, {args.segments} segments)"
    if config.curriculum and name != "detect_memorize":
        raise InputError("--curriculum with a synthetic task applies to detect_memorize, whose length grows with it")
    segment_size = task.segment_size_for(args.segments)
    memory = memory_config(args, segment_size)
    if config.curriculum:
        size = args.task_size if args.task_size is not None else TASK_SIZE_DEFAULTS["detect_memorize"]
        source = TaskSource(lambda n: make_task("detect_memorize", num_segments=n, segment_size=size), args.seed)
        given = [args.segments] if flags_given(args, ["--segments"]) else []  # else the default, never trained at
        eval_segments = max([n for _, n in config.curriculum] + given)
    else:
        source, eval_segments = TaskSource(task, seed=args.seed), None
    saved = _checkpoint_config(args.model)
    if saved is not None:  # an rmt checkpoint trains on whole, with its own memory settings
        _refuse_overridden_flags(args, saved)
        if saved.segment_size != segment_size:
            raise InputError(
                f"--model {args.model} cuts segments of {saved.segment_size} tokens, but {name} in {args.segments} "
                f"segments needs {segment_size}: give the --segments (and --task-size) it was trained with"
            )
        return Setup(_load_checkpoint(args), source, description, eval_segments)
    if args.model is not None:
        if _mode_of(args.model) == "encoder":
            raise InputError(f"synthetic tasks train a decoder (causal LM), but --model {args.model} is an encoder")
        backbone, _ = _pretrained(args, "decoder")
        if backbone.get_input_embeddings().weight.shape[0] < task.vocab_size:
            raise InputError(f"the {name} task needs {task.vocab_size} token ids; {args.model} embeds fewer")
    else:
        positions = segment_size + 2 * memory.num_memory_tokens
        if memory.xl_cache_tokens:  # positions run on across segments: the table must cover the longest input
            longest = eval_segments or args.segments
            positions = source.task(longest).sequence_length + (longest + 1) * 2 * memory.num_memory_tokens
        backbone = random_backbone(
            args.family,
            vocab_size=task.vocab_size,
            num_layers=args.layers,
            hidden_size=args.hidden,
            num_heads=args.heads,
            max_positions=positions,
            seed=args.seed,
        )
    return Setup(memory_model(backbone, memory), source, description, eval_segments)


def _text_setup(
    args: argparse.Namespace,
    config: TrainConfig,
    tasks: list[str] | None,
    num_facts: int | tuple[int, int] | None,
) -> Setup:
    """A pretrained backbone (or rmt checkpoint) on a data file, or on generated BABILong samples of `tasks`."""
    from rmt.data.collate import QACollator, check_tokenizer

    saved = _checkpoint_config(args.model)
    if saved is not None:
        _refuse_overridden_flags(args, saved)
    if args.segment_size is not None:
        segment_size = args.segment_size
    else:
        segment_size = saved.segment_size if saved is not None else DEFAULT_SEGMENT_SIZE
    mode = _mode_of(args.model)
    if mode == "encoder" and saved is None:  # said in the flags' terms (RMTConfig names a mode no flag sets)
        decoder_only = [flag for flag, given in (("--memory armt", args.memory_kind == "armt"),
                                                 ("--xl-cache-tokens", args.xl_cache_tokens > 0)) if given]  # fmt: skip
        if decoder_only:
            raise InputError(
                f"{decoder_only[0]}: needs a decoder, and --model {args.model} is an encoder (a sequence classifier)"
            )
    labels = None
    if mode == "encoder":
        labels = _babilong_labels(tasks) if tasks else None
    if saved is not None:  # an rmt checkpoint trains on whole, with its own memory settings
        from rmt.build import pretrained_tokenizer

        model = _load_checkpoint(args)
        backbone, tokenizer = model.backbone, pretrained_tokenizer(args.model)
        if mode == "encoder" and labels is not None:
            _refuse_other_classes(args, backbone.config, labels)
    else:
        backbone, tokenizer = _pretrained(args, mode, labels)
    if mode == "encoder" and labels is None:
        labels = [backbone.config.id2label[i] for i in range(backbone.config.num_labels)]
    check_tokenizer(tokenizer, backbone.get_input_embeddings().weight.shape[0])
    if saved is None:
        from rmt.build import memory_model

        special = {"cls_token_id": tokenizer.cls_token_id, "sep_token_id": tokenizer.sep_token_id}
        fields = {"mode": mode, **(special if mode == "encoder" else {})}
        model = memory_model(backbone, memory_config(args, segment_size, **fields))
    if tasks:
        from rmt.data.babilong_source import BabilongSource

        source = BabilongSource(
            tasks,
            tokenizer,
            load_background(args.haystack),
            QACollator(tokenizer, mode, labels),
            segment_size=segment_size,
            reserve=DECODER_RESERVE if mode == "decoder" else 0,
            facts_before_last=args.facts_before_last,
            seed=args.seed,
            default_segments=args.segments,
            num_facts=num_facts,
            distractors=args.distractors,
        )
        eval_segments = max(n for _, n in config.curriculum) if config.curriculum else args.segments
        haystack = ",".join(Path(path).name for path in args.haystack.split(",")) if args.haystack else None
        data = _data_identity(
            args.data,
            {
                "--segments": (args.segments, DEFAULT_SEGMENTS),
                "--haystack": (haystack, None),
                "--facts": ("-".join(map(str, num_facts)) if isinstance(num_facts, tuple) else num_facts, None),
                "--facts-before-last": (args.facts_before_last, DEFAULT_FACTS_BEFORE_LAST),
                "--distractors": (args.distractors, 0.0),
            },
        )
        return Setup(model, source, data, eval_segments, tokenizer)
    from datasets import IterableDataset

    from rmt.data.files import DatasetSource, load_records, record_shape, split_validation

    records = load_records(args.data, streaming=args.streaming or None)
    shape = record_shape(records.column_names, args.data)
    if args.validation_data:
        if flags_given(args, ["--validation-samples"]):
            raise InputError("--validation-samples splits held-out records off --data; with --validation-data, drop it")
        validation = load_records(args.validation_data, streaming=False)
        held_out_shape = record_shape(validation.column_names, args.validation_data)
        if held_out_shape != shape:
            kinds = {"qa": "question-answering records", "text": "text for language modelling"}
            raise InputError(
                f"--validation-data {args.validation_data} holds {kinds[held_out_shape]}, "
                f"but --data {args.data} holds {kinds[shape]}: hold out data of the same kind"
            )
    else:
        try:
            records, validation = split_validation(records, args.validation_samples, seed=args.seed)
        except InputError as err:
            raise InputError(
                f"--data {args.data}: {err}; hold out fewer with --validation-samples, or give --validation-data"
            ) from None
    if shape == "qa":
        if args.max_length is not None:
            raise InputError(f"--max-length cuts text for language modelling; {args.data} holds questions and answers")
        if mode == "encoder" and labels is None:
            raise InputError("an encoder needs its answer classes: train from a model with labels or use babilong:")
        collate, metric = QACollator(tokenizer, mode, labels), "accuracy"
    else:
        if mode == "encoder":
            raise InputError(f"{args.data} holds text for language modelling, which needs a decoder (causal LM)")
        collate, metric = text_collator(tokenizer, args.max_length), "loss"
    source = DatasetSource(
        records,
        collate,
        seed=args.seed,
        validation=validation,
        metric=metric,
        name=args.data,
        first_record=0 if args.validation_data else args.validation_samples,  # a stream's held-out records come first
    )
    # Named by the file's name, not its path: a resume from another folder, or of moved data, reads the same file
    # (its contents are compared too: `_data_contents`).
    split_off = DEFAULT_VALIDATION_SAMPLES if args.validation_data else args.validation_samples  # unused then
    data = _data_identity(
        Path(args.data).name,
        {
            "--max-length": (args.max_length, None),
            "--validation-data": (Path(args.validation_data).name if args.validation_data else None, None),
            "--validation-samples": (split_off, DEFAULT_VALIDATION_SAMPLES),
            "streamed": (isinstance(records, IterableDataset), False),  # (also unasked) records in another order
        },
    )
    return Setup(model, source, data, None, tokenizer)


def _data_identity(name: str, settings: dict[str, tuple[Any, Any]]) -> str:
    """The data a run reads, as its checkpoint records it and a resume compares it: `name` and each data flag of
    `settings` (flag: (value, default)) whose value is not its default. A resume with other samples or another order
    is refused; a run with the defaults keeps the bare name (as checkpoints from before these flags were listed)."""
    changed = [
        flag if value is True else f"{flag} {value}" for flag, (value, default) in settings.items() if value != default
    ]
    return f"{name} ({', '.join(changed)})" if changed else name


def _checkpoint_config(model: str | None) -> RMTConfig | None:
    """The RMTConfig of the rmt checkpoint folder `--model` names; None for any other model."""
    from rmt.backbones.loading import MEMORY_CONFIG

    if model is None or not (Path(model) / MEMORY_CONFIG).is_file():
        return None
    return RMTConfig.load(Path(model) / MEMORY_CONFIG)


def _load_checkpoint(args: argparse.Namespace) -> RecurrentMemoryModel:
    """The rmt checkpoint --model names, whole, in the --dtype asked for."""
    from rmt.backbones.loading import DTYPES
    from rmt.memory.recurrent import RecurrentMemoryModel

    return RecurrentMemoryModel.from_pretrained(args.model, dtype=DTYPES[args.dtype])


def _refuse_other_classes(args: argparse.Namespace, backbone_config: Any, labels: list[str]) -> None:
    """An rmt checkpoint's classifier keeps its head: the data's answer classes must be its classes, in its order,
    or every answer would be trained as another class."""
    head = [backbone_config.id2label[i] for i in range(backbone_config.num_labels)]
    if head != labels:
        raise InputError(
            f"--model {args.model} answers with the classes {head}, but {args.data} needs {labels}: start from its "
            f"backbone folder ({Path(args.model) / 'backbone'}) to train its head for these classes"
        )


def _refuse_overridden_flags(args: argparse.Namespace, saved: RMTConfig) -> None:
    """An rmt checkpoint trains on with its own memory settings; a memory flag or --segment-size given with another
    value than the checkpoint's would be ignored, so it is refused, naming each (also one given at its default
    value, which argparse alone cannot tell from one not given)."""
    defaults = RMTConfig()
    differing = []
    for f in dataclasses.fields(RMTConfig):
        if f.name in MEMORY_SKIP:
            continue
        flag, value = flag_name(f.name, MEMORY_FLAGS), getattr(args, f.name)
        given = value != getattr(defaults, f.name) or flags_given(args, [flag, f"--no-{flag[2:]}"])
        if given and value != getattr(saved, f.name):
            differing.append(f"{flag} {value} (the checkpoint has {getattr(saved, f.name)})")
    if args.segment_size is not None and args.segment_size != saved.segment_size:
        differing.append(f"--segment-size {args.segment_size} (the checkpoint has {saved.segment_size})")
    if differing:
        raise InputError(
            f"--model {args.model} is an rmt checkpoint, which trains on with its own memory settings, but "
            f"{', '.join(differing)}: drop those flags, or start from its backbone ({Path(args.model) / 'backbone'})"
        )


def _pretrained(args: argparse.Namespace, mode: str, labels: list[str] | None = None) -> tuple[Any, Any]:
    from rmt.build import pretrained_backbone, pretrained_tokenizer

    try:
        backbone = pretrained_backbone(args.model, mode=mode, dtype=args.dtype, labels=labels)
    except MissingWeightsError as err:
        if not err.head_only:
            raise
        raise InputError(
            f"--model {args.model} has no classification head and --data {args.data} names no classes to start one: "
            "an encoder trains on a data file from a classifier fine-tuned on its answers (its config names the "
            "classes), or on babilong:TASK (the task's answers are the classes); text for language modelling needs "
            "a decoder"
        ) from err
    return backbone, pretrained_tokenizer(args.model)


def _mode_of(name_or_path: str) -> str:
    """'encoder' for BERT-like backbones (classifiers), 'decoder' for causal LMs, from the model's config; a config
    that cannot be read, or a family the memory models do not support, is refused before any weights load."""
    from rmt.backbones import DECODER_FAMILIES, ENCODER_FAMILIES
    from rmt.backbones.gguf import GGUF_ARCHITECTURES, gguf_architecture_refusal
    from rmt.build import backbone_model_type, gguf_architecture

    model_type = backbone_model_type(name_or_path)
    if model_type is None:  # a GGUF file: transformers reads causal LMs from it
        architecture = gguf_architecture(name_or_path)
        if architecture is not None and architecture not in GGUF_ARCHITECTURES:  # known before minutes of loading
            refusal = gguf_architecture_refusal(architecture)
            raise InputError(f"--model {name_or_path}: a GGUF file of architecture {architecture!r}; {refusal}")
        return "decoder"
    if model_type in ENCODER_FAMILIES:
        return "encoder"
    if model_type in DECODER_FAMILIES:
        return "decoder"
    raise InputError(
        f"--model {name_or_path}: unknown model family {model_type!r}; supported: decoders "
        f"{sorted(DECODER_FAMILIES)}, encoders {sorted(ENCODER_FAMILIES)}"
    )


def _babilong_labels(tasks: list[str]) -> list[str]:
    from rmt.data.babilong import answer_labels

    return sorted({label for task in tasks for label in answer_labels(task)})
