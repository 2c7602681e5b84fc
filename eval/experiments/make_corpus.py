"""Build the second real-English corpus of the experiments from documentation that exists offline.

The *Rust documentation books*: the English mdBook manuals a Rust toolchain installs under
`<toolchain>/share/doc/rust/html/<book>/print.html` (The Rust Programming Language, the Reference, the
Rustonomicon, Cargo, rustc, rustdoc, Clippy, the Edition Guide, the Embedded Book, Rust by Example, the
Style Guide, the Unstable Book, the error-code index). Only prose is kept: headings, paragraphs, list
items, table cells and block quotes; code blocks (`<pre>`) are dropped, inline code is kept as text. A
document is one section (the text between two `<h1>`/`<h2>` headings); documents are separated by a blank
line in the output file (paragraphs inside a document by single newlines), which is how
`common.read_documents` splits a `.txt` file.

Why this text: it is long-form technical English written for people (not docstrings of the Python standard
library, which the embedded corpus already is), it is on this machine without a network, and the output is
deterministic for a given toolchain (books in sorted order). It is *not* a general-domain corpus; any other
text file can be used instead with `--data PATH`.

    python eval/experiments/make_corpus.py                      # -> eval/experiments/data/rust_books.txt
    python eval/experiments/make_corpus.py --html-root DIR --output FILE

Prints the file's size, document count and sha256 (each result JSON records them too).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import html
import re
from collections.abc import Iterable
from html.parser import HTMLParser
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUTPUT = HERE / "data" / "rust_books.txt"
DEFAULT_HTML_GLOB = "/root/.rustup/toolchains/*/share/doc/rust/html"

#: The English books (subfolders holding a `print.html`); translations and old editions are left out.
BOOKS = ("book", "cargo", "clippy", "edition-guide", "embedded-book", "error_codes", "nomicon", "reference",
         "rust-by-example", "rustc", "rustdoc", "style-guide", "unstable-book")

_TEXT_BLOCKS = {"p", "li", "td", "th", "blockquote", "dt", "dd", "h3", "h4", "h5", "h6"}
_SECTION_HEADINGS = {"h1", "h2"}
_SKIPPED = {"pre", "script", "style", "nav", "button", "svg", "noscript", "head"}


class _ProseExtractor(HTMLParser):
    """Sections of prose of one mdBook `print.html`: a list of documents, each a list of paragraphs."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: list[list[str]] = [[]]
        self._skip_depth = 0
        self._block: list[str] | None = None
        self._block_depth = 0

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in _SKIPPED:
            self._skip_depth += 1
            return
        if tag in _SECTION_HEADINGS:
            self._flush()
            if self.sections[-1]:
                self.sections.append([])
        if tag in _TEXT_BLOCKS or tag in _SECTION_HEADINGS:
            if self._block is None:
                self._block, self._block_depth = [], 0
            self._block_depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED:
            self._skip_depth = max(0, self._skip_depth - 1)
            return
        if (tag in _TEXT_BLOCKS or tag in _SECTION_HEADINGS) and self._block is not None:
            self._block_depth -= 1
            if self._block_depth <= 0:
                self._flush()

    def handle_data(self, data: str) -> None:
        if self._skip_depth == 0 and self._block is not None:
            self._block.append(data)

    def _flush(self) -> None:
        if self._block is not None:
            text = re.sub(r"\s+", " ", html.unescape("".join(self._block))).strip()
            if text:
                self.sections[-1].append(text)
        self._block, self._block_depth = None, 0


def book_documents(print_html: Path, min_chars: int = 200) -> list[str]:
    """The prose sections of one book, in page order; sections shorter than `min_chars` are dropped."""
    parser = _ProseExtractor()
    parser.feed(print_html.read_text(encoding="utf-8", errors="replace"))
    parser.close()
    parser._flush()
    docs = ["\n".join(section) for section in parser.sections]
    return [d for d in docs if len(d) >= min_chars]


def find_html_root() -> Path:
    """The newest-looking Rust toolchain documentation folder on this machine (sorted glob, last)."""
    roots = sorted(glob.glob(DEFAULT_HTML_GLOB))
    if not roots:
        raise SystemExit(f"no Rust documentation found at {DEFAULT_HTML_GLOB}; pass --html-root or use any "
                         "other English text file with --data PATH in the studies")
    stable = [r for r in roots if "/stable-" in r]
    return Path((stable or roots)[-1])


def write_documents(docs: Iterable[str], output: Path) -> dict:
    """Write `docs` as a corpus file (documents separated by a blank line, each exact duplicate after its first
    dropped); return its path, documents, characters, bytes and sha256. An empty corpus is refused."""
    docs = list(dict.fromkeys(docs))
    if not docs:
        raise ValueError(f"no document to write to {output}")
    output.parent.mkdir(parents=True, exist_ok=True)
    text = "\n\n".join(docs) + "\n"
    output.write_text(text, encoding="utf-8")
    digest = hashlib.sha256(output.read_bytes()).hexdigest()
    return {"path": str(output), "documents": len(docs), "chars": len(text), "bytes": output.stat().st_size,
            "sha256": digest}


def build(html_root: Path, output: Path) -> dict:
    """Write the corpus; return its path, documents, characters and sha256."""
    paths = [html_root / book / "print.html" for book in BOOKS]
    docs = [doc for path in paths if path.is_file() for doc in book_documents(path)]
    if not docs:
        raise SystemExit(f"no book under {html_root} gave any text")
    return {**write_documents(docs, output), "html_root": str(html_root)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--html-root", type=Path, default=None,
                        help=f"folder holding the books (default: the last of {DEFAULT_HTML_GLOB})")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    info = build(args.html_root or find_html_root(), args.output)
    print(f"{info['path']}: {info['documents']} documents, {info['bytes'] / 1e6:.2f} MB, sha256 {info['sha256']}")
    return info


if __name__ == "__main__":
    main()
