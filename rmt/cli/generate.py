"""Read a long document through memory, then answer a prompt.

    rmt generate runs/qa1-lm/model --document book.txt --question "Where is Mary?" --max-new-tokens 20
    rmt generate runs/qa1-lm/model --document book.txt --memory-file book.memory      # read once, save the memory
    rmt generate runs/qa1-lm/model --memory-file book.memory --question "Where is the milk?"   # no re-reading
    rmt generate runs/lm/model --document book.txt --prompt "The next chapter begins"   # any text to continue

The document is read in chunks with a progress bar (tokens/s), keeping only the memory: a 1M-token document needs one
segment's activations. With --memory-file, an existing file is loaded instead of reading the document (refused when
--document names another document, or the same file changed since), and a missing one is written after reading it.
The prompt starts a new segment after the document's memory. --question asks the
way `rmt train` and `rmt eval` ask a question-answering model ("Question: TEXT", a line break, then "Answer:", after
a blank line); --prompt is continued as it is (so it reads the document with its trailing line breaks; --question, and
a run that only saves the memory, without them). Any causal memory model works (RMT, ARMT), e.g. one trained from the
offline SmolLM2 weights. Decoding is greedy unless --do-sample is given; --temperature, --top-k and --top-p need
it. The prompt and the generation settings are checked before the document is read. Only the answer goes to standard
output (`ANSWER=$(rmt generate ...)` holds it alone); what was read, loaded or saved, notes and errors go to
standard error.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rmt.cli.common import add_runtime_arguments, apply_runtime, check_seed, flags_given
from rmt.errors import InputError
from rmt.files import check_output_folder, file_sha256

if TYPE_CHECKING:
    from rmt.memory.recurrent import RecurrentMemoryModel
    from rmt.memory.state import State


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "generate",
        allow_abbrev=False,
        help="read a long document through memory, then answer a prompt",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "checkpoint",
        help="a causal memory model saved by save_pretrained (e.g. OUTPUT/model), or its Hugging Face Hub id "
        "(owner/name)",
    )
    parser.add_argument("--document", default=None, help="text file to read through memory")
    asked = parser.add_mutually_exclusive_group()
    asked.add_argument("--prompt", default=None, help="text to continue after the document, as it is")
    asked.add_argument(
        "--question",
        default=None,
        help="a question to answer after the document, in the question-answering format models are trained on",
    )
    parser.add_argument("--memory-file", default=None, help="load the document's memory from here, or save it here")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate (default: %(default)s)")
    parser.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="with --do-sample: sampling temperature (> 0; default: the model's, else 1.0)",
    )
    parser.add_argument(
        "--top-k",
        type=int,
        default=None,
        help="with --do-sample: sample from the k most likely tokens only (default: the model's, else 50; 0: all)",
    )
    parser.add_argument(
        "--top-p",
        type=float,
        default=None,
        help="with --do-sample: nucleus sampling, the smallest set with this mass (default: the model's, else off)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="with --do-sample: seed for sampling (default: %(default)s)"
    )
    parser.add_argument("--chunk-tokens", type=int, default=8192, help="tokens read per chunk (default: %(default)s)")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"), help="weights' dtype (default: fp32)")
    add_runtime_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from rmt.backbones.loading import DTYPES
    from rmt.build import pretrained_tokenizer
    from rmt.data.collate import check_tokenizer, qa_prompt
    from rmt.memory.generation import check_generation_settings, stop_token_ids
    from rmt.memory.pretrained import local_checkpoint
    from rmt.memory.recurrent import RecurrentMemoryModel

    device = apply_runtime(args)
    text, memory_file, sampling = _checked_flags(args)
    asked = "--question" if args.question is not None else "--prompt"
    # A hub id: its snapshot, with its tokenizer in backbone/ (after the checks of the flags: a mistyped local path
    # reads as a hub id, and its error would hide theirs).
    args.checkpoint = local_checkpoint(args.checkpoint)
    model = RecurrentMemoryModel.from_pretrained(args.checkpoint, dtype=DTYPES[args.dtype]).to(device).eval()
    if not model.token_logits:
        raise InputError(f"{args.checkpoint} holds a classifier; generate needs a causal LM (decoder)")
    tokenizer = pretrained_tokenizer(args.checkpoint)
    check_tokenizer(tokenizer, model.backbone.get_input_embeddings().weight.shape[0])
    settings = {
        "max_new_tokens": args.max_new_tokens,
        "do_sample": args.do_sample,
        "eos_token_id": stop_token_ids(model, tokenizer),
        **sampling,
    }
    prompt = None
    if text is not None:  # checked now, not after reading a long document
        if args.question is not None:
            text = qa_prompt("", args.question)
        prompt = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids.to(device)
        if prompt.shape[1] == 0:
            raise InputError(f"{asked} {text!r} holds no tokens of this model's tokenizer")
        check_generation_settings(model, prompt, **settings)

    save_failed = False
    # How the document is read, recorded with its memory: a later run that reads it otherwise is told
    # Only a --prompt continues the document's text as typed; --question and a run that only saves the memory (to be
    # asked with --question, as the usage shows) read it without its trailing line breaks.
    reading = {"dtype": args.dtype, "trailing_breaks": args.prompt is not None}
    if memory_file is not None and memory_file.exists():
        state = _saved_memory(model, memory_file, args.document, reading)
        if flags_given(args, ["--chunk-tokens"]):
            # A note, once the memory is taken: the same command reads and saves the document on its first run and
            # loads the memory on the next.
            print(
                f"note: --chunk-tokens has no effect: the document's memory is loaded from --memory-file "
                f"{memory_file}, not read",
                file=sys.stderr,
            )
    else:
        document = Path(args.document)
        raw = document.read_bytes()  # hashed as read: a file that changes while it is read is not the one recorded
        state, tokens = _read_document(model, tokenizer, document, raw, args)
        if memory_file is not None:
            sha256 = hashlib.sha256(raw).hexdigest()
            save_failed = not _save(model, state, memory_file, document, sha256, tokens, reading)
    if prompt is None:
        return 1 if save_failed else 0
    torch.manual_seed(args.seed)  # sampled answers repeat with the same --seed
    # The ids as a tensor, whatever the backbone's generation config says of return_dict_in_generate.
    out = model.generate(prompt, memory_state=state, return_dict_in_generate=False, **settings)
    print(tokenizer.decode(out[0, prompt.shape[1] :], skip_special_tokens=True).strip())
    return 1 if save_failed else 0


def _checked_flags(args: argparse.Namespace) -> tuple[str | None, Path | None, dict[str, float | int]]:
    """(the text to answer, --memory-file, the sampling settings given), every flag checked before the model loads."""
    from rmt.data.haystack import check_text_file

    asked = "--question" if args.question is not None else "--prompt"
    text = args.question if args.question is not None else args.prompt
    if args.document is None and args.memory_file is None:
        raise InputError("give --document (and/or --memory-file with a saved memory)")
    if args.max_new_tokens < 1 or args.chunk_tokens < 1:
        raise InputError("--max-new-tokens and --chunk-tokens must be >= 1")
    check_seed(args.seed)
    if not args.do_sample and flags_given(args, ["--seed"]):
        # A note, not a refusal: greedy decoding gives the same answer under every seed, so the run is what was asked
        # for either way, and a script that always passes --seed keeps working when it switches sampling off.
        print(
            "note: --seed has no effect without --do-sample: greedy decoding does not draw at random", file=sys.stderr
        )
    # Sampling settings not given on the command line keep the model's generation config (transformers' defaults).
    sampling = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p}
    sampling = {name: value for name, value in sampling.items() if value is not None}
    named = ", ".join(f"--{name.replace('_', '-')} {value}" for name, value in sampling.items())
    if sampling and not args.do_sample:
        verb = "sets" if len(sampling) == 1 else "set"
        raise InputError(f"{named} {verb} sampling, but without --do-sample decoding is greedy: add --do-sample")
    if text is None and (sampling or args.do_sample):
        raise InputError(
            f"{named or '--do-sample'}: how the answer is generated, and there is no --prompt or --question to answer"
        )
    if text is not None and not text.strip():
        raise InputError(f"{asked} is empty: give the text to answer after the document")
    if args.memory_file is not None and not args.memory_file.strip():  # an unset shell variable, say
        raise InputError("--memory-file is empty: give the memory file to save or read")
    if args.memory_file is not None and args.memory_file.endswith(("/", os.sep)):
        raise InputError(f"--memory-file {args.memory_file} names a folder: give a file in it")
    memory_file = Path(args.memory_file) if args.memory_file is not None else None
    if text is None and memory_file is None:
        raise InputError(
            "nothing to do: give --prompt or --question to answer after the document, or --memory-file to save its "
            "memory"
        )
    if memory_file is not None and memory_file.exists() and not memory_file.is_file():
        raise InputError(f"--memory-file {memory_file} is a folder, not a memory file")
    if text is None and memory_file is not None and memory_file.exists():
        raise InputError(
            f"nothing to do: --memory-file {memory_file} exists already; give --prompt or --question to answer from it"
        )
    if args.document is not None:  # a missing or binary file: refused before the model loads
        check_text_file(args.document, f"--document {args.document}")
    if memory_file is None or not memory_file.exists():
        if args.document is None:
            raise InputError(f"--memory-file {memory_file} does not exist yet: give --document to read")
        if memory_file is not None:
            check_output_folder(memory_file, "--memory-file")  # its folder: not a file
    return text, memory_file, sampling


def _read_document(
    model: RecurrentMemoryModel, tokenizer: Any, document: Path, raw: bytes, args: argparse.Namespace
) -> tuple[State, int]:
    """(the memory after the document's text `raw`, its tokens), read in chunks of --chunk-tokens with a bar."""
    import torch
    from tqdm.auto import tqdm

    from rmt.data.haystack import decode_text

    document_text = decode_text(raw, f"--document {document}")
    if args.prompt is None:  # "\n\nQuestion:" follows the text without its trailing breaks, as in training
        document_text = document_text.rstrip()
    ids = tokenizer(document_text, add_special_tokens=False).input_ids
    if not ids:
        raise InputError(f"--document {document} holds no text")
    ids = torch.tensor([ids], device=model.device)
    stream = model.stream()
    started = time.perf_counter()
    with tqdm(total=ids.shape[1], unit="tok", desc="reading", disable=args.no_progress) as bar:
        for start in range(0, ids.shape[1], args.chunk_tokens):
            chunk = ids[:, start : start + args.chunk_tokens]
            stream.feed(chunk)
            bar.update(chunk.shape[1])
    seconds = time.perf_counter() - started
    state = stream.memory_state
    print(f"read {ids.shape[1]} tokens in {seconds:.1f} s ({ids.shape[1] / seconds:,.0f} tokens/s)", file=sys.stderr)
    return state, ids.shape[1]


def _saved_memory(
    model: RecurrentMemoryModel, memory_file: Path, document: str | None, reading: dict[str, Any]
) -> State:
    """The memory saved in `memory_file`, refused when --document names another document than the one it holds (by
    content: a copy at another path is the same document) or the same file changed since."""
    from rmt.memory.memory_file import read_memory
    from rmt.memory.state import batch_size_of

    state, metadata = read_memory(model, memory_file)
    if batch_size_of(state) != 1:
        raise InputError(
            f"--memory-file {memory_file} holds the memories of {batch_size_of(state)} documents (saved from a batch "
            "with the Python API): rmt generate answers from one"
        )
    saved = metadata.get("document")
    saved = saved if isinstance(saved, str) else None  # the Python API may record any JSON value
    recorded = metadata.get("document_sha256")  # (memory files of before it was recorded have none)
    if document is not None:
        given = Path(document)
        same_path = saved is not None and Path(saved).resolve() == given.resolve()
        same = file_sha256(given) == recorded if recorded is not None else same_path
        if not same:
            held = f"the memory of {saved}" if saved else "the memory of a document"
            reason = "has changed since it was read" if same_path else "is another document"
            raise InputError(
                f"--memory-file {memory_file} holds {held}, and --document {document} {reason}: give another "
                "--memory-file to read it (or delete this one), or leave out --document to answer from the saved memory"
            )
    print(f"loaded the memory of {saved or 'a document'} ({metadata.get('tokens', '?')} tokens)", file=sys.stderr)
    read_in = metadata.get("dtype")
    if read_in is not None and read_in != reading["dtype"]:
        print(
            f"note: the document was read in {read_in}; the answer is generated in {reading['dtype']}", file=sys.stderr
        )
    kept = metadata.get("trailing_breaks")
    if kept is not None and kept != reading["trailing_breaks"]:
        then, now = ("with", "without") if kept else ("without", "with")
        asked = "--prompt" if reading["trailing_breaks"] else "--question"
        print(
            f"note: the memory was read {then} the document's trailing line breaks; this {asked} run reads the "
            f"document {now} them (--prompt continues the text as typed; --question and saving alone read it "
            "without them)",
            file=sys.stderr,
        )
    return state


def _save(
    model: RecurrentMemoryModel,
    state: State,
    memory_file: Path,
    document: Path,
    sha256: str,
    tokens: int,
    reading: dict[str, Any],
) -> bool:
    """Save the document's memory; a failure to write it (a full disk, say) is one line, and the answer still
    follows: False then."""
    from rmt.memory.memory_file import save_memory

    try:
        # The absolute path: a later run from another folder names the document it holds.
        save_memory(
            model, state, memory_file, document=str(document.resolve()), document_sha256=sha256, tokens=tokens,
            **reading,
        )  # fmt: skip
    except OSError as err:
        problem = err.strerror or err
        print(f"rmt generate: error: could not save the memory to {memory_file}: {problem}", file=sys.stderr)
        return False
    print(f"saved the document's memory to {memory_file}", file=sys.stderr)
    return True
