"""connectors/pdf.py on real PDF files generated per test (tests/support/pdfgen.py): parsing, every poison kind,
limits, discovery over real directory trees with symlinks, hashing and settings fingerprints."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from connectors.base import DocumentError
from connectors.pdf import RACY_SECONDS, Discovery, NotAFileError, PdfConnector, discover, file_hash, stat_key
from connectors.pdf_parse import parse_pdf
from connectors.pdf_settings import Extractor, PdfSettings
from tests.support import pdfgen
from tests.support.reads import count_reads

PAGES = [
    "Alpha page one talks about invoices and payment terms.",
    "Beta page two lists the delivery addresses of the warehouses.",
    "Gamma page three closes with the signatures of both parties.",
]


@pytest.fixture(params=["auto", "pdfium", "pypdf"])
def extractor(request: pytest.FixtureRequest) -> Extractor:
    """Tests that take it run with each extractor: auto (the default), pdfium and pypdf alone."""
    value: Extractor = request.param
    return value


def words(text: str) -> list[str]:
    return text.replace(".", " ").split()


def reason_of(path: Path, settings: PdfSettings | None = None) -> DocumentError:
    with pytest.raises(DocumentError) as info:
        parse_pdf(path, settings or PdfSettings())
    return info.value


# --- parsing -----------------------------------------------------------------------------------------------


def test_pages_are_numbered_from_one_and_hold_their_text(tmp_path: Path, extractor: Extractor) -> None:
    path = pdfgen.text_pdf(tmp_path / "contract.pdf", PAGES)

    doc = parse_pdf(path, PdfSettings(extractor=extractor))

    assert [p.number for p in doc.pages] == [1, 2, 3]
    for page, source in zip(doc.pages, PAGES, strict=True):
        assert words(page.text) == words(source)
    assert doc.metadata == {"page_count": 3}


def test_blank_page_is_skipped_but_keeps_numbering(tmp_path: Path, extractor: Extractor) -> None:
    path = pdfgen.text_pdf(tmp_path / "gap.pdf", [PAGES[0], "", PAGES[2]])

    doc = parse_pdf(path, PdfSettings(extractor=extractor))

    assert [p.number for p in doc.pages] == [1, 3]
    assert words(doc.pages[1].text) == words(PAGES[2])
    assert doc.metadata["page_count"] == 3


def test_long_page_keeps_every_word(tmp_path: Path, extractor: Extractor) -> None:
    text = " ".join(f"token{i:05d}" for i in range(4000))
    path = pdfgen.text_pdf(tmp_path / "long.pdf", [text])

    doc = parse_pdf(path, PdfSettings(extractor=extractor))

    assert doc.pages[0].text.split() == text.split()


def test_two_columns_are_extracted_column_by_column(tmp_path: Path, extractor: Extractor) -> None:
    left = "Left column explains the cooling system of the reactor hall in several sentences of text."
    right = "Right column describes the emergency exits and the assembly points outside the building."
    path = pdfgen.two_column_pdf(tmp_path / "columns.pdf", [(left, right), (right, left)])

    doc = parse_pdf(path, PdfSettings(extractor=extractor))

    first = " ".join(doc.pages[0].text.split())
    assert left in first
    assert right in first
    assert first.index(left) < first.index(right)
    second = " ".join(doc.pages[1].text.split())
    assert second.index(right) < second.index(left)


def test_title_comes_from_metadata(tmp_path: Path, extractor: Extractor) -> None:
    path = pdfgen.text_pdf(tmp_path / "file-name.pdf", PAGES, title="Supply Agreement 2024")

    assert parse_pdf(path, PdfSettings(extractor=extractor)).title == "Supply Agreement 2024"


@pytest.mark.parametrize("title", [None, "", "   ", "--- * ---"])
def test_title_falls_back_to_file_stem(tmp_path: Path, title: str | None, extractor: Extractor) -> None:
    path = pdfgen.text_pdf(tmp_path / "annual-report.v2.pdf", PAGES, title=title)

    assert parse_pdf(path, PdfSettings(extractor=extractor)).title == "annual-report.v2"


def test_very_long_title_is_capped(tmp_path: Path, extractor: Extractor) -> None:
    path = pdfgen.text_pdf(tmp_path / "t.pdf", PAGES, title="Title " * 200)

    title = parse_pdf(path, PdfSettings(extractor=extractor)).title
    assert len(title) == 500
    assert title.startswith("Title Title")


# --- poison files ------------------------------------------------------------------------------------------


def test_encrypted_without_password_is_quarantined_as_encrypted(tmp_path: Path, extractor: Extractor) -> None:
    path = pdfgen.encrypted_pdf(tmp_path / "locked.pdf", "open-sesame", PAGES)

    error = reason_of(path, PdfSettings(extractor=extractor))

    assert error.reason == "encrypted"
    assert not error.retryable


def test_encrypted_with_wrong_passwords_is_quarantined_as_encrypted(tmp_path: Path, extractor: Extractor) -> None:
    path = pdfgen.encrypted_pdf(tmp_path / "locked.pdf", "open-sesame", PAGES)

    error = reason_of(path, PdfSettings(passwords=[SecretStr("nope"), SecretStr("wrong")], extractor=extractor))

    assert error.reason == "encrypted"
    assert "open-sesame" not in str(error)


def test_encrypted_opens_with_a_configured_password(tmp_path: Path, extractor: Extractor) -> None:
    path = pdfgen.encrypted_pdf(tmp_path / "locked.pdf", "open-sesame", PAGES, title="Locked")

    doc = parse_pdf(
        path, PdfSettings(passwords=[SecretStr("first-guess"), SecretStr("open-sesame")], extractor=extractor)
    )

    assert [p.number for p in doc.pages] == [1, 2, 3]
    assert words(doc.pages[2].text) == words(PAGES[2])
    assert doc.title == "Locked"


def test_owner_only_encrypted_opens_without_a_password(tmp_path: Path, extractor: Extractor) -> None:
    path = pdfgen.owner_only_encrypted_pdf(tmp_path / "restricted.pdf", "owner-secret", PAGES)

    doc = parse_pdf(path, PdfSettings(extractor=extractor))

    assert [words(p.text) for p in doc.pages] == [words(t) for t in PAGES]


def test_generated_encrypted_files_really_are_encrypted(tmp_path: Path) -> None:
    """Guards the generator the tests above rely on."""
    from pypdf import PdfReader

    locked = PdfReader(pdfgen.encrypted_pdf(tmp_path / "locked.pdf", "open-sesame", PAGES))
    restricted = PdfReader(pdfgen.owner_only_encrypted_pdf(tmp_path / "r.pdf", "owner-secret", PAGES))

    assert locked.is_encrypted
    assert restricted.is_encrypted
    assert locked.decrypt("") == 0
    assert locked.decrypt("open-sesame") != 0
    assert restricted.decrypt("") != 0


def test_truncated_file(tmp_path: Path) -> None:
    source = pdfgen.text_pdf(tmp_path / "whole.pdf", PAGES)
    path = pdfgen.truncated_pdf(tmp_path / "cut.pdf", source, keep_fraction=0.6)

    assert path.stat().st_size < source.stat().st_size
    assert reason_of(path).reason == "truncated"


def test_image_only_file_has_no_text(tmp_path: Path, extractor: Extractor) -> None:
    path = pdfgen.image_only_pdf(tmp_path / "scan.pdf", pages=3)

    error = reason_of(path, PdfSettings(extractor=extractor))

    assert error.reason == "no_text"
    assert "3 page(s)" in error.message


def test_text_file_named_pdf(tmp_path: Path) -> None:
    assert reason_of(pdfgen.not_a_pdf(tmp_path / "notes.pdf")).reason == "not_a_pdf"


def test_garbage_body_is_corrupt(tmp_path: Path, extractor: Extractor) -> None:
    error = reason_of(pdfgen.garbage_pdf(tmp_path / "garbage.pdf"), PdfSettings(extractor=extractor))

    assert error.reason == "corrupt"
    assert not error.retryable


def test_empty_file_is_retryable(tmp_path: Path) -> None:
    path = tmp_path / "empty.pdf"
    path.touch()

    error = reason_of(path)

    assert error.reason == "empty"
    assert error.retryable


# --- limits ------------------------------------------------------------------------------------------------


def test_max_file_bytes(tmp_path: Path) -> None:
    path = pdfgen.text_pdf(tmp_path / "doc.pdf", PAGES)
    size = path.stat().st_size

    assert len(parse_pdf(path, PdfSettings(max_file_bytes=size)).pages) == 3
    assert reason_of(path, PdfSettings(max_file_bytes=size - 1)).reason == "too_large"


def test_max_pages(tmp_path: Path, extractor: Extractor) -> None:
    path = pdfgen.text_pdf(tmp_path / "doc.pdf", PAGES)

    assert len(parse_pdf(path, PdfSettings(max_pages=3, extractor=extractor)).pages) == 3
    assert reason_of(path, PdfSettings(max_pages=2, extractor=extractor)).reason == "too_large"


def test_max_chars(tmp_path: Path, extractor: Extractor) -> None:
    path = pdfgen.text_pdf(tmp_path / "doc.pdf", PAGES)
    total = sum(len(p.text) for p in parse_pdf(path, PdfSettings(extractor=extractor)).pages)

    assert len(parse_pdf(path, PdfSettings(max_chars=total, extractor=extractor)).pages) == 3
    error = reason_of(path, PdfSettings(max_chars=total - 1, extractor=extractor))
    assert error.reason == "too_large"
    assert "page 3" in error.message


# --- discovery ---------------------------------------------------------------------------------------------


def make_tree(root: Path) -> dict[str, Path]:
    """root/a.pdf, root/sub/B.PDF, root/sub/deeper/c.Pdf plus files that must be ignored."""
    files = {
        "a": pdfgen.text_pdf(root / "a.pdf", ["a"]),
        "b": pdfgen.text_pdf(root / "sub" / "B.PDF", ["b"]),
        "c": pdfgen.text_pdf(root / "sub" / "deeper" / "c.Pdf", ["c"]),
    }
    (root / "notes.txt").write_text("not a pdf")
    (root / "sub" / "b.pdf.bak").write_text("backup")
    (root / "sub" / "pdf").mkdir()
    return {k: v.resolve() for k, v in files.items()}


def test_discover_is_recursive_and_case_insensitive(tmp_path: Path) -> None:
    files = make_tree(tmp_path / "docs")

    found = discover([tmp_path / "docs"])

    assert sorted(found.files) == sorted(files.values())
    assert found.roots == [(tmp_path / "docs").resolve()]
    assert found.unreadable == []


def test_discover_deduplicates_links_to_one_file(tmp_path: Path) -> None:
    files = make_tree(tmp_path / "docs")
    (tmp_path / "docs" / "link-to-a.pdf").symlink_to(files["a"])
    (tmp_path / "docs" / "sub-again").symlink_to(tmp_path / "docs" / "sub", target_is_directory=True)
    (tmp_path / "docs" / "dangling.pdf").symlink_to(tmp_path / "nowhere.pdf")

    found = discover([tmp_path / "docs", files["a"], tmp_path / "docs" / "link-to-a.pdf"])

    assert len(found.files) == 3
    assert sorted(found.files) == sorted(files.values())


def test_discover_survives_a_symlink_loop(tmp_path: Path) -> None:
    files = make_tree(tmp_path / "docs")
    sub = tmp_path / "docs" / "sub"
    (sub / "up").symlink_to(sub.parent, target_is_directory=True)  # docs/sub/up -> docs
    (sub / "deeper" / "up").symlink_to(sub, target_is_directory=True)  # docs/sub/deeper/up -> docs/sub
    result: list[Discovery] = []

    worker = threading.Thread(target=lambda: result.append(discover([tmp_path / "docs"])), daemon=True)
    worker.start()
    worker.join(timeout=15)

    assert not worker.is_alive(), "discover() did not finish: it followed the symlink loop"
    assert sorted(result[0].files) == sorted(files.values())


def test_discover_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing"):
        discover([tmp_path / "missing"])


def test_discover_file_given_directly(tmp_path: Path) -> None:
    files = make_tree(tmp_path / "docs")

    found = discover([files["b"]])

    assert found.files == [files["b"]]
    assert found.roots == []


# --- connector ---------------------------------------------------------------------------------------------


def test_covers_files_under_walked_directories_only(tmp_path: Path) -> None:
    files = make_tree(tmp_path / "docs")
    other = pdfgen.text_pdf(tmp_path / "other" / "x.pdf", ["x"]).resolve()
    sibling = pdfgen.text_pdf(tmp_path / "docs2" / "y.pdf", ["y"]).resolve()

    walked = PdfConnector([tmp_path / "docs"])
    direct = PdfConnector([other])

    assert walked.covers(str(files["c"]))
    assert walked.covers(str((tmp_path / "docs" / "deleted-since.pdf").resolve()))
    assert not walked.covers(str(other))
    assert not walked.covers(str(sibling))  # shares a string prefix with docs, not a parent
    assert not direct.covers(str(other))


def test_iter_documents_stats_and_reads_once_on_demand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = make_tree(tmp_path / "docs")
    expected = hashlib.sha256(files["b"].read_bytes()).hexdigest()
    reads = count_reads(monkeypatch)
    docs = {d.external_id: d for d in PdfConnector([tmp_path / "docs"]).iter_documents()}

    assert set(docs) == {str(p) for p in files.values()}
    assert reads == []  # listing reads nothing: a document is judged by its stat until it must be read
    doc = docs[str(files["b"])]
    assert doc.title == "B"
    assert doc.metadata == {"size": files["b"].stat().st_size}
    assert doc.read is not None
    content = doc.read()
    assert content.content_hash == expected
    assert content.size == files["b"].stat().st_size
    assert [p.text for p in content.load().pages] == ["b"]
    assert reads == [files["b"]]  # hashed and parsed from one read


def test_stat_key_changes_with_a_write_and_is_withheld_while_racy(tmp_path: Path) -> None:
    path = tmp_path / "a.pdf"
    pdfgen.text_pdf(path, ["one"])
    st = path.stat()
    key = stat_key(st)
    assert key is not None and key == stat_key(path.stat())
    changed = max(st.st_mtime, st.st_ctime)
    assert stat_key(st, racy_before=changed + 1) == key  # changed before the cut-off: trusted
    assert stat_key(st, racy_before=changed) is None  # a write in the same tick could repeat this stat
    assert stat_key(st, racy_before=time.time() - RACY_SECONDS) is None  # just written
    pdfgen.text_pdf(path, ["two, longer"])
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # the old mtime back: size and ctime still tell
    assert stat_key(path.stat()) != key


def test_file_hash_is_stable_and_follows_content(tmp_path: Path) -> None:
    path = pdfgen.text_pdf(tmp_path / "doc.pdf", PAGES)
    first = file_hash(path, max_bytes=1 << 30)

    assert file_hash(path, max_bytes=1 << 30) == first
    assert first == hashlib.sha256(path.read_bytes()).hexdigest()

    pdfgen.text_pdf(path, [*PAGES[:2], PAGES[2] + " Amended."])
    assert file_hash(path, max_bytes=1 << 30) != first


def test_file_hash_of_oversize_file_uses_size_and_mtime(tmp_path: Path) -> None:
    path = pdfgen.text_pdf(tmp_path / "doc.pdf", PAGES)
    st = path.stat()

    assert file_hash(path, max_bytes=st.st_size - 1) == f"oversize:{st.st_size}:{st.st_mtime_ns}"
    assert file_hash(path, max_bytes=st.st_size) == hashlib.sha256(path.read_bytes()).hexdigest()


# --- settings ----------------------------------------------------------------------------------------------


def test_fingerprint_follows_passwords_and_hides_them() -> None:
    base = PdfSettings().fingerprint()
    one = PdfSettings(passwords=[SecretStr("Hunter2-Secret")]).fingerprint()
    two = PdfSettings(passwords=[SecretStr("Hunter2-Secret"), SecretStr("Other-Secret")]).fingerprint()

    assert len({base, one, two}) == 3
    assert PdfSettings(passwords=[SecretStr("Hunter2-Secret")]).fingerprint() == one
    assert "Hunter2" not in one
    assert "Other" not in two
    assert "Hunter2-Secret" not in repr(PdfSettings(passwords=[SecretStr("Hunter2-Secret")]))


@pytest.mark.parametrize("change", [{"max_file_bytes": 10}, {"max_pages": 10}, {"max_chars": 10}])
def test_fingerprint_follows_limits(change: dict[str, int]) -> None:
    assert PdfSettings.model_validate(change).fingerprint() != PdfSettings().fingerprint()


def test_fingerprint_ignores_extensions() -> None:
    assert PdfSettings(extensions=[".pdf", ".ai"]).fingerprint() == PdfSettings().fingerprint()


def test_padding_after_the_final_eof_is_not_truncation(tmp_path: Path, extractor: Extractor) -> None:
    path = pdfgen.text_pdf(tmp_path / "padded.pdf", ["Some writers pad the file after the end marker."])
    with path.open("ab") as fh:
        fh.write(b"\x00" * 5000 + b"\r\n")
    parsed = parse_pdf(path, PdfSettings(extractor=extractor))
    assert "pad the file" in parsed.pages[0].text


# --- extractors --------------------------------------------------------------------------------------------


def test_a_file_pdfium_rejects_is_read_by_pypdf_unless_pdfium_is_forced(tmp_path: Path) -> None:
    """A trailer without /Root: pdfium refuses the file ("data format error"), pypdf finds the catalog."""
    whole = pdfgen.text_pdf(tmp_path / "whole.pdf", PAGES)
    path = tmp_path / "rootless.pdf"
    path.write_bytes(whole.read_bytes().replace(b"/Root", b"/Rooq"))

    assert [words(p.text) for p in parse_pdf(path, PdfSettings()).pages] == [words(t) for t in PAGES]
    assert len(parse_pdf(path, PdfSettings(extractor="pypdf")).pages) == 3
    error = reason_of(path, PdfSettings(extractor="pdfium"))
    assert error.reason == "corrupt"
    assert "pdfium" in error.message


def test_an_unknown_extractor_is_rejected_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match="'auto', 'pdfium' or 'pypdf'"):
        PdfSettings.model_validate({"extractor": "poppler"})


def test_a_missing_pypdfium2_fails_on_import_instead_of_falling_back() -> None:
    code = "import sys; sys.modules['pypdfium2'] = None; import connectors.pdf"
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)

    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ModuleNotFoundError") and "pypdfium2" in last


def test_special_files_named_pdf_are_never_opened(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    good = pdfgen.text_pdf(docs / "good.pdf", ["fine"])
    os.mkfifo(docs / "pipe.pdf")
    (docs / "zero.pdf").symlink_to("/dev/zero")
    (docs / "folder.pdf").mkdir()
    pdfgen.text_pdf(docs / "folder.pdf" / "inner.pdf", ["inside"])
    (docs / "gone.pdf").symlink_to(docs / "missing.pdf")

    with caplog.at_level(logging.WARNING, logger="connectors.pdf"):
        found = discover([docs])  # a read of the FIFO would block this test forever

    assert sorted(found.files) == sorted([good, docs / "folder.pdf" / "inner.pdf"])
    warned = "\n".join(r.getMessage() for r in caplog.records)
    assert "pipe.pdf: it is a FIFO" in warned and "zero.pdf: it is a character device (through a link)" in warned
    assert "gone.pdf: it is a broken link" in warned
    with pytest.raises(NotAFileError, match=r"pipe\.pdf is a FIFO: PDFs are read from regular files"):
        discover([docs / "pipe.pdf"])
