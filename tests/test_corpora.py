"""The builders of the experiments' real-English corpora: the Rust books (`make_corpus.py`, HTML) and the manual
pages (`make_man_corpus.py`, roff), on small synthetic inputs."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval" / "experiments"))

import make_corpus  # noqa: E402
import make_man_corpus  # noqa: E402

LONG = "The memory learns in context, and every level keeps its own clock. " * 4   # > 200 characters

PAGE = r""".\" a comment line
.de Vb \" Begin verbatim text
.ft CW
.nf
..
.ie n \{\
.    ds C` ""
'br\}
.if \n(.H>23 .if \n(.V>19 \
\{\
.    ds L" dropped text inside a conditional
.\}
.TH TOOL 1 "2026" "tool 1.0"
.SH NAME
tool \- do \fBone\fR thing
.SH SYNOPSIS
.B tool
[\fIoptions\fR] file
.SH DESCRIPTION
.B Tool
reads \fIfile\fP and writes \(lqits words\(rq \(em all of them.
It joins
.BR alternating (1)
fonts.
.PP
.nf
code that is dropped
.fi
.TP
.B \-v
Print more \*(lqoutput\*(rq.
.IP "" 4
No tag here.
.IP \(bu 2
A bullet item.
.SS "A subsection"
Text after it, with a long continued \
line.
.SH "SEE ALSO"
other(1), more(7)
"""


def test_man_page_prose_is_kept_and_markup_dropped():
    paragraphs = make_man_corpus.page_paragraphs(PAGE)
    assert paragraphs == [
        "tool - do one thing",
        "Tool reads file and writes “its words” — all of them. It joins alternating(1) fonts.",
        "-v Print more “output”.",
        "No tag here.",
        "A bullet item.",
        "A subsection",
        "Text after it, with a long continued line.",
    ]


def test_man_pages_that_only_include_another_or_use_mdoc_are_left_out():
    assert make_man_corpus.page_paragraphs(".so man1/other.1\n") is None
    assert make_man_corpus.page_paragraphs(".Dd March 1, 2020\n.Dt TOOL 1\n.Sh NAME\n") is None


def test_macro_arguments_keep_quoted_and_empty_arguments():
    assert make_man_corpus.macro_arguments('"" 4') == ["", "4"]
    assert make_man_corpus.macro_arguments('"a b" c') == ["a b", "c"]
    assert make_man_corpus.macro_arguments('x "say ""hi"""') == ["x", 'say "hi"']


def test_man_corpus_build_reads_each_real_page_once(tmp_path):
    root = tmp_path / "man"
    (root / "man1").mkdir(parents=True)
    (root / "man7").mkdir()
    (root / "man1" / "alpha.1.gz").write_bytes(gzip.compress(f".SH DESCRIPTION\n{LONG}\n".encode()))
    (root / "man7" / "beta.7").write_text(f".SH DESCRIPTION\nBeta: {LONG}\n")
    (root / "man1" / "alias.1.gz").symlink_to(root / "man1" / "alpha.1.gz")          # read through its target
    (root / "man1" / "copy.1").write_text(f".SH DESCRIPTION\n{LONG}\n")               # same text as alpha
    (root / "man1" / "gcloud_x.1").write_text(f".SH DESCRIPTION\nGenerated {LONG}\n")  # excluded by default
    (root / "man1" / "short.1").write_text(".SH DESCRIPTION\nToo short.\n")
    (root / "man1" / "include.1").write_text(".so man7/beta.7\n")
    output = tmp_path / "out.txt"
    info = make_man_corpus.build(root, output)
    documents = output.read_text().split("\n\n")
    assert info["pages"] == 5 and info["documents"] == 2 == len(documents)
    assert documents[0] == LONG.strip() and documents[1] == f"Beta: {LONG.strip()}\n"
    again = make_man_corpus.build(root, tmp_path / "again.txt")
    assert again["sha256"] == info["sha256"]
    assert make_man_corpus.build(root, output, exclude_prefix="")["documents"] == 3


def test_rust_book_prose_keeps_sections_and_drops_code(tmp_path):
    page = tmp_path / "print.html"
    page.write_text(
        "<html><head><title>t</title></head><body><nav>menu</nav>"
        f"<h1>Ownership</h1><p>{LONG}</p><pre><code>let x = 1;</code></pre><p>Use <code>x</code> once.</p>"
        "<h2>Short</h2><p>Too short.</p>"
        f"<h2>Borrowing</h2><ul><li>{LONG}</li></ul></body></html>")
    documents = make_corpus.book_documents(page)
    assert documents == [f"Ownership\n{LONG.strip()}\nUse x once.", f"Borrowing\n{LONG.strip()}"]
