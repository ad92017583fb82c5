"""embedding/chunking.py: exact behaviour on a fake tokenizer (tables of small cases), then properties on
realistic text with the real all-MiniLM-L6-v2 tokenizer (loaded offline from its installed package)."""

from __future__ import annotations

import itertools
import os
import random
import re
from collections.abc import Callable, Sequence

import pytest
from pydantic import ValidationError

from embedding.chunking import Chunk, ChunkingSettings, ChunkTooLongError, chunk_pages
from embedding.model import ModelTokenizer, resolve_model_dir

os.environ["HF_HUB_OFFLINE"] = "1"

# --- a fake tokenizer --------------------------------------------------------------------------------------


class FakeCounter:
    """Whitespace words as tokens; words longer than ``piece`` characters become several adjacent tokens
    (like word pieces). ``count`` adds 2 special tokens, plus ``extra_per_word`` per word (a tokenizer whose
    counts of a span differ from the page it came from)."""

    def __init__(self, piece: int = 1_000_000, extra_per_word: int = 0) -> None:
        self.piece = piece
        self.extra_per_word = extra_per_word
        self.count_calls = 0

    def offsets(self, text: str) -> list[tuple[int, int]]:
        spans: list[tuple[int, int]] = []
        for match in re.finditer(r"\S+", text):
            for start in range(match.start(), match.end(), self.piece):
                spans.append((start, min(start + self.piece, match.end())))
        return spans

    def count(self, texts: Sequence[str]) -> list[int]:
        self.count_calls += 1
        return [len(self.offsets(t)) + 2 + self.extra_per_word * len(t.split()) for t in texts]


def numbered(n: int, prefix: str = "w") -> str:
    return " ".join(f"{prefix}{i}" for i in range(n))


def word_spans(chunks: Sequence[Chunk]) -> list[tuple[int, int]]:
    """Chunks of ``numbered`` text as [first, last + 1) word numbers."""
    spans = []
    for chunk in chunks:
        ids = [int(w[1:]) for w in chunk.text.split()]
        assert ids == list(range(ids[0], ids[-1] + 1)), f"chunk is not a contiguous run of words: {ids}"
        spans.append((ids[0], ids[-1] + 1))
    return spans


def locate(page: str, chunks: Sequence[Chunk]) -> list[tuple[int, int]]:
    """Character spans of the chunks of one page, in order (each found after the previous one's start)."""
    spans: list[tuple[int, int]] = []
    start = 0
    for chunk in chunks:
        at = page.find(chunk.text, start)
        assert at >= 0, f"chunk {chunk.index} is not a piece of its page after offset {start}"
        spans.append((at, at + len(chunk.text)))
        start = at + 1
    return spans


def settings(chunk: int, overlap: int) -> ChunkingSettings:
    return ChunkingSettings(chunk_tokens=chunk, overlap_tokens=overlap)


# max_tokens=3 leaves a 1-token window and caps the overlap at 1 // 2 - 1 = -1: a negative overlap makes every
# window start one token past the previous end, so every other token is dropped.


@pytest.mark.parametrize(
    ("n_words", "chunk", "overlap", "max_tokens", "expected"),
    [
        (10, 16, 4, 512, [(0, 10)]),
        (16, 16, 4, 512, [(0, 16)]),
        (17, 16, 4, 512, [(0, 16), (12, 17)]),
        (40, 16, 4, 512, [(0, 16), (12, 28), (24, 40)]),
        (40, 16, 0, 512, [(0, 16), (16, 32), (32, 40)]),
        (40, 20, 7, 512, [(0, 20), (13, 33), (26, 40)]),
        # the model's window caps the chunk size: 12 - 2 special tokens = 10 words, overlap capped to 10//2-1
        (25, 160, 32, 12, [(0, 10), (6, 16), (12, 22), (18, 25)]),
    ],
)
def test_windows_and_overlap(
    n_words: int, chunk: int, overlap: int, max_tokens: int, expected: list[tuple[int, int]]
) -> None:
    chunks = chunk_pages([(1, numbered(n_words))], FakeCounter(), settings(chunk, overlap), max_tokens)

    assert word_spans(chunks) == expected
    assert [c.token_count for c in chunks] == [b - a + 2 for a, b in expected]


@pytest.mark.parametrize(
    ("sentence_end_after", "expected_first"),
    [
        (15, (0, 16)),  # '.' on word 15: within the last third of a 20-word window, cut there
        (19, (0, 20)),  # on the window's last word
        (13, (0, 14)),  # the earliest word still in the last third (floor = 20 * 2 // 3 = 13)
        (11, (0, 20)),  # too early: cut at the window's end instead
    ],
)
def test_cut_prefers_sentence_end_in_last_third(sentence_end_after: int, expected_first: tuple[int, int]) -> None:
    tokens = [f"w{i}" for i in range(50)]
    tokens[sentence_end_after] += "."
    page = " ".join(tokens)

    chunks = chunk_pages([(1, page)], FakeCounter(), settings(20, 4), 512)

    first = chunks[0].text.split()
    assert (int(first[0][1:]), int(first[-1].rstrip(".")[1:]) + 1) == expected_first


@pytest.mark.parametrize(
    "pages",
    [
        [(1, numbered(30)), (2, numbered(30, "p")), (3, numbered(5, "q"))],
        [(None, numbered(50)), (None, numbered(50, "p"))],
        [(7, "short page"), (8, numbered(100, "p"))],
    ],
)
def test_chunks_never_cross_a_page_and_indices_are_consecutive(pages: list[tuple[int | None, str]]) -> None:
    chunks = chunk_pages(pages, FakeCounter(), settings(16, 4), 512)

    assert [c.index for c in chunks] == list(range(len(chunks)))
    position = 0
    for number, text in pages:
        own = []
        while position < len(chunks) and chunks[position].text in text:
            own.append(chunks[position])
            position += 1
        assert own, f"no chunks for page {number}"
        assert {c.page for c in own} == {number}
        assert {w for c in own for w in c.text.split()} == set(text.split())
    assert position == len(chunks)


@pytest.mark.parametrize(
    ("pages", "expected_pages"),
    [
        ([], []),
        ([(1, "")], []),
        ([(1, "   \n\t  \n")], []),
        ([(1, ""), (2, "two words"), (3, " ")], [2]),
        ([(1, "one"), (2, ""), (3, "three")], [1, 3]),
    ],
)
def test_empty_pages_produce_nothing(pages: list[tuple[int | None, str]], expected_pages: list[int | None]) -> None:
    counter = FakeCounter()

    chunks = chunk_pages(pages, counter, settings(16, 4), 512)

    assert [c.page for c in chunks] == expected_pages
    assert [c.index for c in chunks] == list(range(len(expected_pages)))
    if not expected_pages:
        assert counter.count_calls == 0


def run(n: int, seed: int = 0) -> str:
    """A run of ``n`` letters without spaces whose 8-letter pieces are (practically) unique."""
    rng = random.Random(seed)
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(n))


@pytest.mark.parametrize(
    ("text", "chunk", "max_tokens"),
    [
        (run(100, 1), 16, 512),  # one 100-token word, window 16
        (run(100, 2), 160, 18),  # window capped by the model: 16 tokens
        ("head " + run(70, 3) + " tail", 16, 512),
    ],
)
def test_a_word_longer_than_the_window_is_cut(text: str, chunk: int, max_tokens: int) -> None:
    counter = FakeCounter(piece=1)  # every character a token, and no word start inside a word

    chunks = chunk_pages([(1, text)], counter, settings(chunk, 4), max_tokens)

    assert len(chunks) > 1
    assert all(c.token_count <= min(chunk + 2, max_tokens) for c in chunks)
    assert [c.token_count for c in chunks] == counter.count([c.text for c in chunks])
    # inside a word longer than the window the overlap has no word start to snap to: chunks overlap mid-word,
    # and together they cover every character in order
    spans = locate(text, chunks)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    for (_, a1), (b0, b1) in itertools.pairwise(spans):
        assert b0 <= a1 < b1


# A run without word starts (a long URL, a long word) just past the window must not make the chunker emit
# one chunk per word before it, each a suffix of the previous one (a bug once).


@pytest.mark.parametrize(
    ("text", "piece"),
    [
        pytest.param(numbered(100), 1_000_000, id="words"),
        pytest.param(" ".join(f"w{i}." if i % 7 == 6 else f"w{i}" for i in range(100)), 1_000_000, id="sentences"),
        pytest.param("one two three " + "X" * 40 + " after the run", 1, id="run-after-one-word"),
        pytest.param(
            "a b c d e f g h " + run(100, 4),
            1,
            id="run-after-eight-words",
        ),
        pytest.param(
            numbered(30) + " " + run(80, 5) + " " + numbered(30, "p"),
            4,
            id="run-mid-page",
        ),
    ],
)
def test_every_chunk_adds_new_text(text: str, piece: int) -> None:
    chunks = chunk_pages([(1, text)], FakeCounter(piece=piece), settings(16, 4), 512)

    spans = locate(text, chunks)
    assert len(spans) >= 2, f"{len(spans)} chunk(s): no pair to compare"  # every case is longer than the window
    for (a0, a1), (b0, b1) in itertools.pairwise(spans):
        assert b0 > a0 and b1 > a1, f"chunk at {b0}:{b1} adds nothing to the one at {a0}:{a1}"


def test_recount_over_the_window_is_split_until_it_fits() -> None:
    counter = FakeCounter(extra_per_word=1)  # a span costs twice the tokens its page offsets suggest
    page = numbered(200)

    chunks = chunk_pages([(4, page)], counter, settings(100, 10), 64)

    assert all(c.token_count <= 64 for c in chunks)
    assert [c.token_count for c in chunks] == counter.count([c.text for c in chunks])
    assert {w for c in chunks for w in c.text.split()} == set(page.split())
    assert {c.page for c in chunks} == {4}
    assert [c.index for c in chunks] == list(range(len(chunks)))


@pytest.mark.parametrize("max_tokens", [0, 3, 7])
def test_a_window_too_small_for_chunks_is_refused(max_tokens: int) -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        chunk_pages([(1, numbered(10))], FakeCounter(), settings(16, 4), max_tokens)


def test_text_that_cannot_fit_raises() -> None:
    counter = FakeCounter(extra_per_word=1000)

    with pytest.raises(ChunkTooLongError):
        chunk_pages([(1, "hello world")], counter, settings(16, 4), 64)


@pytest.mark.parametrize(
    ("chunk", "overlap", "valid"),
    [
        (16, 0, True),
        (16, 7, True),
        (16, 8, False),
        (17, 7, True),
        (17, 8, False),
        (160, 32, True),
        (160, 79, True),
        (160, 80, False),
        (160, 200, False),
        (15, 0, False),  # below the minimum chunk size
        (160, -1, False),
    ],
)
def test_settings_reject_overlap_of_half_the_chunk(chunk: int, overlap: int, valid: bool) -> None:
    if valid:
        assert ChunkingSettings(chunk_tokens=chunk, overlap_tokens=overlap).overlap_tokens == overlap
    else:
        with pytest.raises(ValidationError):
            ChunkingSettings(chunk_tokens=chunk, overlap_tokens=overlap)


def test_settings_forbid_unknown_fields() -> None:
    with pytest.raises(ValidationError):
        ChunkingSettings.model_validate({"chunk_tokens": 160, "chunk_size": 100})


# --- the real tokenizer on realistic text ------------------------------------------------------------------

MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length


@pytest.fixture(scope="module")
def tokenizer() -> ModelTokenizer:
    return ModelTokenizer(resolve_model_dir("all-MiniLM-L6-v2")[0])


_VOCAB = [
    "the",
    "pipeline",
    "ingests",
    "documents",
    "from",
    "many",
    "sources",
    "and",
    "stores",
    "their",
    "chunks",
    "with",
    "vectors",
    "so",
    "that",
    "retrieval",
    "can",
    "find",
    "passages",
    "quickly;",
    "operators",
    "watch",
    "the",
    "ledger",
    "for",
    "quarantined",
    "files",
    "while",
    "engineers",
    "tune",
    "chunk",
    "sizes,",
    "overlap",
    "and",
    "batch",
    "sizes",
    "for",
    "throughput",
    "on",
    "commodity",
    "hardware",
]


def prose(rng: random.Random, n_sentences: int) -> str:
    sentences = []
    for _ in range(n_sentences):
        body = " ".join(rng.choice(_VOCAB) for _ in range(rng.randrange(6, 25)))
        sentences.append(body.capitalize() + rng.choice([".", ".", ".", "?", "!"]) + f" [{rng.randrange(10**6)}]")
    paragraphs = [" ".join(sentences[i : i + 5]) for i in range(0, len(sentences), 5)]
    return "\n\n".join(paragraphs)


def code_block(rng: random.Random, n_functions: int) -> str:
    parts = ["Example usage of the client library:", "```python"]
    for i in range(n_functions):
        parts += [
            f"def handler_{i}_{rng.randrange(10**4)}(request: Request, retries: int = {rng.randrange(9)}) -> dict:",
            f'    """Handle request kind {i}."""',
            f"    payload = {{'id': request.id, 'n': {rng.randrange(10**5)}, 'tags': ['a{i}', 'b{i}']}}",
            f"    if retries > 0 and not request.headers.get('X-Trace-{i}'):",
            f"        return handler_{i}(request, retries - 1)  # retry",
            "    return payload",
            "",
        ]
    return "\n".join([*parts, "```", "The handlers above are registered at start-up."])


def long_urls(rng: random.Random, n_refs: int) -> str:
    refs = []
    for i in range(n_refs):
        path = "/".join(f"{rng.choice(_VOCAB)}-{rng.randrange(10**5)}" for _ in range(rng.randrange(3, 8)))
        query = "&".join(f"k{j}={rng.randrange(10**8)}" for _ in range(3) for j in [rng.randrange(50)])
        refs.append(f"[{i + 1}] See the design notes at https://docs.example.org/{path}?{query}#sec-{i} for details.")
    return prose(rng, 5) + "\n\nReferences\n" + "\n".join(refs)


def cjk(rng: random.Random, n_sentences: int) -> str:
    def sentence() -> str:
        return "".join(chr(rng.randrange(0x4E00, 0x9FA5)) for _ in range(rng.randrange(8, 40))) + "。"

    return "".join(sentence() for _ in range(n_sentences))


def numbers_table(rng: random.Random, n_rows: int) -> str:
    rows = ["| date | region | revenue | margin | change |", "|---|---|---|---|---|"]
    for _ in range(n_rows):
        rows.append(
            f"| 2024-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d} | R{rng.randrange(100)} "
            f"| {rng.randrange(10**7):,}.{rng.randrange(100):02d} | {rng.random():.4f} "
            f"| {rng.uniform(-100, 100):+.1f}% |"
        )
    return "\n".join(rows)


def url_longer_than_window(rng: random.Random) -> str:
    """Prose around a signed tracking link of ~600 characters (~370 tokens: more than the model's window)."""
    url = "https://tracking.example.com/redirect?" + "&".join(f"p{i}={rng.randrange(10**9)}" for i in range(40))
    return prose(rng, 12) + f" Download it from {url} before Friday. " + prose(rng, 12)


def no_spaces(rng: random.Random, n_chars: int) -> str:
    """50k characters without a space: base64-like, so it still tokenizes into many tokens."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    return "".join(rng.choice(alphabet) for _ in range(n_chars))


CASES: dict[str, Callable[[random.Random], str]] = {
    "prose": lambda rng: prose(rng, 120),
    "code": lambda rng: code_block(rng, 40),
    "long_urls": lambda rng: long_urls(rng, 25),
    "url_longer_than_window": url_longer_than_window,
    "cjk": lambda rng: cjk(rng, 150),
    "numbers_table": lambda rng: numbers_table(rng, 150),
    "no_spaces_50k": lambda rng: no_spaces(rng, 50_000),
    "one_50k_word": lambda rng: "a" * 50_000,
}

# Text with no spaces over the overlap region (CJK, base64, long URLs) still overlaps: mid-word there.


def page_of(name: str) -> str:
    return CASES[name](random.Random(name))


# The real-text cases exercise overlap too, so they pin a setting with one (the default has none).
REAL = ChunkingSettings(chunk_tokens=160, overlap_tokens=32)


@pytest.fixture(scope="module")
def chunked(tokenizer: ModelTokenizer) -> dict[str, list[Chunk]]:
    return {name: chunk_pages([(1, page_of(name))], tokenizer, REAL, MAX_TOKENS) for name in CASES}


@pytest.mark.parametrize("name", list(CASES))
def test_real_chunks_fit_the_model_window(
    name: str, chunked: dict[str, list[Chunk]], tokenizer: ModelTokenizer
) -> None:
    chunks = chunked[name]

    recount = tokenizer.count([c.text for c in chunks])
    assert recount == [c.token_count for c in chunks]
    assert max(recount) <= MAX_TOKENS


@pytest.mark.parametrize(
    "name",
    [name for name in CASES],
)
def test_real_chunks_make_progress(name: str, chunked: dict[str, list[Chunk]]) -> None:
    page = page_of(name)
    chunks = chunked[name]

    spans = locate(page, chunks)
    # one 50k-character word is a single chunk (nothing to pair up); every other case is several pages long
    assert len(spans) == 1 if name == "one_50k_word" else len(spans) >= 5, len(spans)
    for (a0, a1), (b0, b1) in itertools.pairwise(spans):
        assert b0 > a0 and b1 > a1, f"chunk at {b0}:{b1} adds nothing to the one at {a0}:{a1}"
    # no slivers: every chunk but the page's last is at least a third of the target size; a cut pulled back
    # to the word boundary before a long unbreakable run may make it that short
    assert all(c.token_count >= REAL.chunk_tokens // 3 for c in chunks[:-1]), [c.token_count for c in chunks]


@pytest.mark.parametrize("name", list(CASES))
def test_real_chunks_lose_no_text(name: str, chunked: dict[str, list[Chunk]]) -> None:
    page = page_of(name)
    chunks = chunked[name]

    assert {c.page for c in chunks} == {1}
    assert [c.index for c in chunks] == list(range(len(chunks)))
    spans = locate(page, chunks)
    covered = bytearray(len(page))
    for a, b in spans:
        covered[a:b] = b"\x01" * (b - a)
    lost = [i for i, ch in enumerate(page) if not ch.isspace() and not covered[i]]
    assert not lost, f"{len(lost)} characters in no chunk, first at {lost[0]}: {page[lost[0] : lost[0] + 40]!r}"
    in_chunks = {w for c in chunks for w in c.text.split()}
    whole = [w for w in page.split() if len(w) < 60]  # longer runs get cut; the span check covers them
    assert [w for w in whole if w not in in_chunks and not any(w in c.text for c in chunks)] == []


@pytest.mark.parametrize(
    "name",
    [
        name
        for name in CASES
        if name != "one_50k_word"  # a single chunk: nothing to overlap
    ],
)
def test_real_consecutive_chunks_overlap(name: str, chunked: dict[str, list[Chunk]], tokenizer: ModelTokenizer) -> None:
    page = page_of(name)
    chunks = chunked[name]
    assert len(chunks) >= 5

    spans = locate(page, chunks)
    for (a0, a1), (b0, _) in itertools.pairwise(spans):
        shared = page[b0:a1]
        assert b0 < a1 and shared.strip(), f"no overlap between chunks at {a0}:{a1} and {b0}"
        # at most the configured overlap, give or take a re-tokenised edge
        assert tokenizer.count([shared])[0] - 2 <= REAL.overlap_tokens + 2


def test_default_chunks_embed_prose_once(tokenizer: ModelTokenizer) -> None:
    """The default (no overlap, docs/benchmarks.md) tiles a page: consecutive chunks share no text, and the
    tokens embedded are the page's own plus each chunk's two special tokens."""
    page = page_of("prose")
    chunks = chunk_pages([(1, page)], tokenizer, ChunkingSettings(), MAX_TOKENS)

    spans = locate(page, chunks)
    assert all(b0 >= a1 for (_, a1), (b0, _) in itertools.pairwise(spans)), spans
    assert all(c.token_count <= ChunkingSettings().chunk_tokens + 2 for c in chunks)
    assert sum(c.token_count for c in chunks) <= len(tokenizer.offsets(page)) + 2 * len(chunks) + 2
