"""connectors/pdf_text.py: ligature codes, line-end hyphens and the page quality score, as pure functions;
then the same repairs end to end on generated PDFs and on the real Debian PDFs in examples/pdfs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from connectors import pdf_text
from connectors.pdf_parse import parse_pdf
from connectors.pdf_settings import PdfSettings
from tests.support import pdfgen

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "pdfs"
_LIGATURE_CODES = re.compile(r"[\x1b-\x1f]")

# --- ligatures ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a \x1dattened tree", "a flattened tree"),  # word-initial
        ("the \x1crst one", "the first one"),
        ("di\x1berent", "different"),  # inside a word
        ("the sta\x1b room", "the staff room"),  # word-final
        ("o\x1ecial", "official"),
        ("ba\x1fe", "baffle"),
        ("o\x1b_struct", "off_struct"),  # an identifier: a letter on one side is enough
        ("O\x1bset", "Offset"),
        ("a \x1c b", "a \x1c b"),  # between spaces: not a ligature, left for clean_text
        ("1\x1b2", "1\x1b2"),  # between digits
        ("\x10blob\x11", "\x10blob\x11"),  # quote codes of the same encoding are no letters
    ],
)
def test_ligature_codes_become_letters_only_inside_words(raw: str, expected: str) -> None:
    assert pdf_text.map_ligatures(raw) == expected


def test_prepare_maps_ligatures_before_controls_are_stripped() -> None:
    assert pdf_text.prepare("the \x1dattened \x10blob\x11\r\nnext") == "the flattened blob\nnext"


# --- hyphens -----------------------------------------------------------------------------------------------


def test_pdfium_hyphen_mark_becomes_a_line_end_hyphen_and_is_joined() -> None:
    prepared = pdf_text.prepare("it ad\ufffedresses the issue\r\n")

    assert prepared == "it ad-\ndresses the issue"
    assert pdf_text.join_hyphens(prepared, set()) == "it addresses the issue"


@pytest.mark.parametrize(
    ("text", "known", "expected"),
    [
        ("a transac-\ntional log", set(), "a transactional log"),
        ("basic conflict-\nresolution", {"conflict-resolution"}, "basic conflict-resolution"),
        ("basic Conflict-\nResolution", {"conflict-resolution"}, "basic Conflict-Resolution"),
        ("a run-time-\nerror", {"run-time-error"}, "a run-time-error"),
        ("a run-time-\nerror", {"run-time"}, "a run-timeerror"),  # only the whole compound counts
        ("pages 10-\n12", set(), "pages 10-\n12"),  # numbers are no hyphenated word
        ("a dash -\nthen", set(), "a dash -\nthen"),
    ],
)
def test_line_end_hyphens_join_unless_the_compound_occurs(text: str, known: set[str], expected: str) -> None:
    assert pdf_text.join_hyphens(text, known) == expected


def test_compounds_are_taken_from_inside_lines_only() -> None:
    pages = ["the conflict-resolution step\nand trans-\nactional", "a Run-Time-Error here"]

    assert pdf_text.compounds(pages) == {"conflict-resolution", "run-time-error"}


def test_a_compound_written_elsewhere_keeps_its_hyphen_across_pages() -> None:
    pages = ["Some conflict-resolution is done.", "basic conflict-\nresolution and transac-\ntional"]
    known = pdf_text.compounds(pages)

    assert pdf_text.join_hyphens(pages[1], known) == "basic conflict-resolution and transactional"


def test_finish_drops_stray_noncharacters() -> None:
    assert pdf_text.finish(" a\ufffe b\uffff ") == "a b"


# --- quality -----------------------------------------------------------------------------------------------

CLEAN = (
    "The program described in this paper fills a need for a freely available tool to manage software "
    "revision and release control in a multi developer environment. This tool also addresses the "
    "increasing need for tracking vendor source distributions while trying to maintain local changes."
)
SPACED = (
    "The program described in this paper fills a need for a freely a vailable tool to manage softw are "
    "re vision and release control in a multi de veloper environment. This tool also addresses the "
    "increasing need for tracking v endor source distrib utions while trying to maintain local changes."
)


def test_a_clean_page_scores_no_damage() -> None:
    quality = pdf_text.score(CLEAN, pdf_text.Vocabulary.of([CLEAN, CLEAN]))

    assert quality.words == len(CLEAN.split())
    assert (quality.bad_chars, quality.split_words, quality.merged_words) == (0, 0, 0)
    assert quality.damage == 0.0 and not quality.damaged


def test_words_broken_by_spaces_score_worse() -> None:
    vocabulary = pdf_text.Vocabulary.of([CLEAN, CLEAN])

    spaced = pdf_text.score(SPACED, vocabulary)

    assert spaced.split_words == 6  # a vailable, softw are, re vision, de veloper, v endor, distrib utions
    assert spaced.suspect
    assert spaced.damage > pdf_text.score(CLEAN, vocabulary).damage
    assert pdf_text.best([SPACED, CLEAN], vocabulary) == CLEAN
    assert pdf_text.best([CLEAN, SPACED], vocabulary) == CLEAN
    assert pdf_text.best([CLEAN, CLEAN.replace("tool", "tool ")], vocabulary) is CLEAN  # a tie: the first


def test_a_word_seen_once_joined_is_not_taken_for_a_split() -> None:
    """ "enjoy the" next to a once-seen "enjoythe" (pdfium's spacing elsewhere) is two words, not damage."""
    vocabulary = pdf_text.Vocabulary.of(["they enjoythe show", "we enjoy the show"])

    assert pdf_text.score("we enjoy the show", vocabulary).split_words == 0
    assert pdf_text.score("a vailable", pdf_text.Vocabulary.of(["available available"])).split_words == 1


def test_words_run_together_score_worse() -> None:
    merged = CLEAN.replace("release control", "releasecontrol").replace("source distributions", "sourcedistributions")
    vocabulary = pdf_text.Vocabulary.of([CLEAN, CLEAN, merged])

    quality = pdf_text.score(merged, vocabulary)

    assert quality.merged_words == 2
    assert quality.damage > pdf_text.score(CLEAN, vocabulary).damage


@pytest.mark.parametrize("bad", ["\x01", "\ufffd", "\ufffe", "\ue000", "\U000f0001"])
def test_unmapped_glyphs_are_damage(bad: str) -> None:
    text = CLEAN.replace("tool", f"t{bad}ol").replace("need", f"n{bad}ed")
    vocabulary = pdf_text.Vocabulary.of([CLEAN])

    quality = pdf_text.score(text, vocabulary)

    assert quality.bad_chars == 4  # "tool" and "need", twice each
    assert quality.damage > pdf_text.score(CLEAN, vocabulary).damage
    assert quality.damaged  # lost glyphs: worth asking the other extractor


def test_many_one_and_two_letter_tokens_are_damage() -> None:
    letters = "T h e pr og ra m de sc ri be d in th is pa pe r fi ll s a ne ed"
    quality = pdf_text.score(letters, pdf_text.Vocabulary.of([letters]))

    assert quality.short_share > 0.9
    assert quality.suspect


def test_a_page_without_words_is_damaged_only_with_bad_characters() -> None:
    vocabulary = pdf_text.Vocabulary.of([])

    assert not pdf_text.score("42 17", vocabulary).damaged
    assert pdf_text.score("\ufffd\ufffd", vocabulary).damaged


# --- end to end --------------------------------------------------------------------------------------------

EXTRACTORS = ["auto", "pdfium", "pypdf"]


@pytest.mark.parametrize("extractor", EXTRACTORS)
def test_line_end_hyphens_of_a_real_pdf_are_joined(tmp_path: Path, extractor: str) -> None:
    path = pdfgen.text_pdf(
        tmp_path / "hyphens.pdf",
        [
            "Every write is transac-\ntional and the conflict-resolution step runs first.",
            "A second conflict-\nresolution pass follows the commit.",
        ],
    )

    doc = parse_pdf(path, PdfSettings.model_validate({"extractor": extractor}))

    assert "transactional" in doc.pages[0].text.split()
    assert "conflict-resolution" in doc.pages[1].text.split()
    assert "\ufffe" not in doc.pages[0].text + doc.pages[1].text


@pytest.mark.parametrize("extractor", EXTRACTORS)
def test_pdftex_ligatures_of_a_real_pdf_come_out_as_letters(extractor: str) -> None:
    """dtc-paper.pdf (Debian's device-tree-compiler) is set in pdfTeX Type 3 fonts whose ligature glyphs
    extract as control codes; "flattened" appears 24 times in it, "different" 4 times."""
    doc = parse_pdf(EXAMPLES / "dtc-paper.pdf", PdfSettings.model_validate({"extractor": extractor}))
    text = "\n".join(p.text for p in doc.pages)

    assert text.count("flattened") >= 20
    assert "different" in text and "first" in text and "offset" in text
    assert not re.search(r"(?<![Ff]l)attened", text)  # no "attened" left of a lost "fl"
    assert not _LIGATURE_CODES.search(text)


def test_words_pdfium_runs_together_are_spaced_from_glyph_positions() -> None:
    """cvs-paper.pdf (groff, justified): pdfium's own spacing gives "enjoythe newbug-fix" and
    "overathousand"; auto finds those pages suspect and re-reads them from the glyph positions."""
    pdfium_only = "\n".join(
        p.text for p in parse_pdf(EXAMPLES / "cvs-paper.pdf", PdfSettings(extractor="pdfium")).pages
    )
    auto = " ".join(" ".join(p.text for p in parse_pdf(EXAMPLES / "cvs-paper.pdf", PdfSettings()).pages).split())

    assert "enjoythe" in pdfium_only and "overathousand" in pdfium_only
    assert "enjoy the new bug-fix" in auto and "over a thousand" in auto


def test_the_glyph_spaced_reading_keeps_ligature_codes_and_hyphen_joins() -> None:
    """Python counts U+001C-1F as whitespace; in these fonts they are fi, fl, ffi, ffl."""
    from connectors.pdf_parse import _PdfiumReader

    with _PdfiumReader.open((EXAMPLES / "dtc-paper.pdf").read_bytes(), PdfSettings()) as reader:
        plain = pdf_text.prepare(reader.page_text(0))
        spaced = pdf_text.prepare(reader.page_text_spaced(0))

    assert "flattened" in spaced and "\n" in spaced
    assert spaced.split() == plain.split()
