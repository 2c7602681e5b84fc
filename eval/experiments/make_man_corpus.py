"""Build a larger real-English corpus from the manual pages installed on this machine.

The corpus for an LM study that needs more fresh text than one pass of the embedded corpus (515K training tokens)
or the Rust books (1.06M): the English manual pages under `/usr/share/man/man[1-8]` (translations in
`/usr/share/man/<language>/` are left out), the prose only. On this project's machine it is about 3,000 pages,
≈ 17 MB of text, ≈ 5M tokens of its 4,096-token BPE (printed when a study prepares it).

What is kept, from the roff source (no `groff` needed, so the output does not depend on its version):
- every page's text lines, with font, size and spacing escapes removed and named characters (`\\(em`, `\\*(lq`,
  ...) replaced by their character; font macros (`.B`, `.BR`, ...) become their words;
- paragraphs split at paragraph, tag and heading macros (`.PP`, `.TP`, `.IP`, `.SS`, ...): a document is one page,
  its paragraphs on single lines, documents separated by a blank line (how `common.read_documents` splits a
  `.txt` file).
What is dropped: the SYNOPSIS, SEE ALSO, AUTHOR(S), COPYRIGHT, LICENSE, REPORTING BUGS, COLOPHON, AVAILABILITY
and FILES sections; no-fill and example blocks (`.nf`/`.fi`, `.EX`/`.EE`, Pod's `.Vb`/`.Ve`), tables (`.TS`),
equations and pictures; macro definitions, conditionals (`.if`, `.ie`/`.el`, with their `\\{ ... \\}` blocks) and
comments; pages that only include another (`.so`), symbolic links (their target is read once), pages in the BSD
`mdoc` macros (`.Dd`; 72 pages here) and, by default, the 16,631 generated `gcloud` command references (one
template repeated; `--exclude-prefix ''` keeps them). Pages shorter than 200 characters after extraction and
exact duplicates are dropped.

    python eval/experiments/make_man_corpus.py                  # -> eval/experiments/data/man_pages.txt
    python eval/experiments/lm_comparison.py --corpora eval/experiments/data/man_pages.txt ...

The output is deterministic for the installed pages (read in sorted order); it prints the file's size, document
count and sha256 (every result JSON records the corpus's cache key).
"""

from __future__ import annotations

import argparse
import gzip
import re
from pathlib import Path

from make_corpus import write_documents

HERE = Path(__file__).resolve().parent
DEFAULT_OUTPUT = HERE / "data" / "man_pages.txt"
DEFAULT_MAN_ROOT = Path("/usr/share/man")
SECTIONS = tuple(f"man{i}" for i in range(1, 9))

#: Sections whose text is lists of names, paths, people or legal boilerplate, not prose.
DROPPED_SECTIONS = {"SYNOPSIS", "SEE ALSO", "AUTHOR", "AUTHORS", "COPYRIGHT", "LICENSE", "REPORTING BUGS",
                    "COLOPHON", "AVAILABILITY", "FILES", "COPYRIGHT AND LICENSE", "AUTHOR AND COPYRIGHT"}
#: Macros that open a block dropped up to the closing macro.
DROPPED_BLOCKS = {"nf": "fi", "EX": "EE", "Vb": "Ve", "TS": "TE", "EQ": "EN", "PS": "PE", "SY": "YS"}
#: Macros that end a paragraph (a tag macro's words start the next one).
PARAGRAPH_MACROS = {"PP", "P", "LP", "TP", "TQ", "IP", "HP", "sp", "br", "RS", "RE", "in", "ti", "Sp", "SS",
                    "SH", "bp", "ne"}
#: Font macros whose arguments are text: set in one font (spaces kept) or alternating fonts (joined).
ONE_FONT = {"B", "I", "SM", "SB"}
ALTERNATING = {"BR", "RB", "IR", "RI", "BI", "IB"}

NAMED_CHARACTERS = {
    "em": "—", "en": "–", "hy": "-", "mi": "-", "aq": "'", "dq": '"', "lq": "“", "rq": "”", "oq": "‘", "cq": "’",
    "co": "©", "rg": "®", "tm": "™", "bu": "•", "mu": "×", "de": "°", "ti": "~", "ha": "^", "rs": "\\",
    "sl": "/", "ga": "`", "aa": "´", "sc": "§", "pl": "+", "eq": "=", ">=": "≥", "<=": "≤", "!=": "≠",
    "+-": "±", "->": "→", "<-": "←", "Fo": "«", "Fc": "»", "fo": "‹", "fc": "›", "ba": "|", "or": "|",
    "at": "@", "sh": "#", "Do": "$", "lB": "[", "rB": "]", "lC": "{", "rC": "}", "la": "⟨", "ra": "⟩",
    "Po": "£", "Eu": "€", "ct": "¢", "ps": "¶", "fm": "′", "sd": "″", "ul": "_", "ss": "ß", "'e": "é",
    ":u": "ü", ":o": "ö", ":a": "ä", "ae": "æ", "oe": "œ", "*W": "-",
}
#: Strings (`\\*x`, `\\*(xx`, `\\*[name]`) as the common preambles (man, Pod::Man) define them for plain text.
STRINGS = {"lq": "“", "rq": "”", "R": "®", "Tm": "™", "S": "", "C`": "", "C'": "", 'L"': '"', 'R"': '"',
           "--": "—", "PI": "pi", "Aq": "'", "C+": "C++"}

_ESCAPE = re.compile(
    r"""\\(?:
        f(?:\[[^\]]*\]|\(..|.)                      # font
      | s(?:[+-]?\d|\(\d\d|\[[^\]]*\]|'[^']*')      # size
      | [nmgk](?:\[[^\]]*\]|\(..|.)                 # number register, colour, mark
      | [whvlLDoXZbNSHRxCY]'[^']*'                  # width, motion, lines, drawing, overstrike, device, ...
      | [zudrcpa%:/,!&|^)}{]                        # zero-width, motions, join, breaks, non-printing
      | \*(?:\[(?P<string_long>[^\]]*)\]|\((?P<string_2>..)|(?P<string_1>.))   # string
      | \[(?P<char_long>[^\]]*)\]                   # named character, long form
      | \((?P<char_2>..)                            # named character
      | (?P<literal>[-e\\.'`\ ~0t_])                # printable escapes
      | .                                           # anything else: dropped
    )""",
    re.VERBOSE,
)
_LITERAL = {"-": "-", "e": "\\", "\\": "\\", ".": ".", "'": "'", "`": "`", " ": " ", "~": " ", "0": " ",
            "t": " ", "_": "_"}


def _replace_escape(match: re.Match) -> str:
    groups = match.groupdict()
    for key in ("string_long", "string_2", "string_1"):
        if groups[key] is not None:
            return STRINGS.get(groups[key], "")
    for key in ("char_long", "char_2"):
        if groups[key] is not None:
            name = groups[key]
            if name.startswith("u") and re.fullmatch(r"u[0-9A-Fa-f]{4,6}", name):
                return chr(int(name[1:], 16))
            return NAMED_CHARACTERS.get(name, "")
    if groups["literal"] is not None:
        return _LITERAL[groups["literal"]]
    return ""


def plain_text(line: str) -> str:
    """A roff text line with its escapes resolved (a comment `\\"` ends it)."""
    line = re.split(r'\\"|\\#', line, maxsplit=1)[0]
    return _ESCAPE.sub(_replace_escape, line)


def macro_arguments(rest: str) -> list[str]:
    """The arguments of a macro line: space-separated, `"..."` quoting spaces, `""` a literal quote."""
    args, current, quoted, started, i = [], "", False, False, 0
    while i < len(rest):
        ch = rest[i]
        if ch == '"':
            if quoted and rest[i + 1:i + 2] == '"':
                current, i = current + '"', i + 2
                continue
            quoted, started = not quoted, True
        elif ch in " \t" and not quoted:
            if started:
                args.append(current)
            current, started = "", False
        else:
            current, started = current + ch, True
        i += 1
    if started:
        args.append(current)
    return args


def page_paragraphs(source: str) -> list[str] | None:
    """The prose paragraphs of one page's roff source; `None` for a page to leave out (`.so`, `mdoc`)."""
    lines = []
    for line in source.replace("\r", "").split("\n"):      # a line ending in an escaped newline continues
        if lines and lines[-1].endswith("\\") and (len(lines[-1]) - len(lines[-1].rstrip("\\"))) % 2 == 1:
            lines[-1] = lines[-1][:-1] + line
        else:
            lines.append(line)
    paragraphs: list[str] = []
    current: list[str] = []
    skip_until: str | None = None        # the closing macro of a dropped block
    brace_depth = 0                      # inside a conditional's \{ ... \}
    dropped_section = False

    def end_paragraph() -> None:
        text = re.sub(r"\s+", " ", " ".join(current)).strip()
        if text and not dropped_section:
            paragraphs.append(text)
        current.clear()

    for raw in lines:
        if brace_depth:
            brace_depth += raw.count("\\{") - raw.count("\\}")
            continue
        stripped = raw.lstrip()
        is_macro = stripped[:1] in (".", "'")
        name, rest = "", ""
        if is_macro:
            body = stripped[1:].lstrip()
            match = re.match(r"([^\s\\]*)\s*(.*)", body)         # `.el\{` is the request `el`
            name, rest = match.group(1), re.split(r'\\"', match.group(2), maxsplit=1)[0]    # drop a comment
        if skip_until is not None:
            if is_macro and name == skip_until:
                skip_until = None
            continue
        if not is_macro:
            text = plain_text(raw)
            if text.strip():
                current.append(text)
            continue
        if name == "":                                           # a comment (`.\\"`) or an empty request
            continue
        if name in ("so", "Dd"):
            return None
        if name in ("de", "de1", "am", "ig"):                     # a definition or ignored block: up to `..`
            args = rest.split()                                  # (or the end macro it names)
            end = args[0] if name == "ig" and args else (args[1] if name != "ig" and len(args) > 1 else ".")
            skip_until = end
            continue
        if name in ("if", "ie", "el", "while"):
            brace_depth = raw.count("\\{") - raw.count("\\}")
            continue
        if name in DROPPED_BLOCKS:
            end_paragraph()
            skip_until = DROPPED_BLOCKS[name]
            continue
        if name == "SH":
            end_paragraph()
            heading = plain_text(" ".join(macro_arguments(rest))).strip().upper()
            dropped_section = heading in DROPPED_SECTIONS
            continue
        if name in PARAGRAPH_MACROS:
            end_paragraph()
            if name == "SS":
                current.append(plain_text(" ".join(macro_arguments(rest))))
                end_paragraph()
            elif name == "IP":
                args = macro_arguments(rest)
                tag = plain_text(args[0]) if args else ""
                if tag.strip() and tag.strip() not in ("•", "-", "*", "o"):
                    current.append(tag)
            continue
        if name in ONE_FONT:
            current.append(plain_text(" ".join(macro_arguments(rest))))
        elif name in ALTERNATING:
            current.append(plain_text("".join(macro_arguments(rest))))
        elif name in ("UR", "MT"):
            continue                                             # the address; the link text follows
        elif name in ("UE", "ME"):
            current.append(plain_text(" ".join(macro_arguments(rest))))
        # every other request (.TH, .IX, .nh, .ft, .ds, .nr, ...) carries no prose
    end_paragraph()
    return paragraphs


def read_page(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return data.decode("utf-8", errors="replace")


def page_paths(man_root: Path, exclude_prefix: str) -> list[Path]:
    """The English pages under `man_root/man1..man8`, regular files only, sorted."""
    paths = []
    for section in SECTIONS:
        folder = man_root / section
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.is_symlink() or not path.is_file():
                continue
            if exclude_prefix and path.name.startswith(exclude_prefix):
                continue
            paths.append(path)
    return paths


def build(man_root: Path, output: Path, exclude_prefix: str = "gcloud", min_chars: int = 200) -> dict:
    """Write the corpus; return its path, pages read, documents, characters and sha256."""
    paths = page_paths(man_root, exclude_prefix)
    docs = ["\n".join(paragraphs) for paragraphs in map(page_paragraphs, map(read_page, paths)) if paragraphs]
    docs = [doc for doc in docs if len(doc) >= min_chars]
    if not docs:
        raise SystemExit(f"no manual page under {man_root}/man[1-8] gave any text; pass --man-root, or use any "
                         "other English text file with --data PATH in the studies")
    return {**write_documents(docs, output), "pages": len(paths), "man_root": str(man_root)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--man-root", type=Path, default=DEFAULT_MAN_ROOT)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--exclude-prefix", default="gcloud",
                        help="leave out pages whose file name starts with this ('' keeps every page)")
    args = parser.parse_args(argv)
    info = build(args.man_root, args.output, args.exclude_prefix)
    print(f"{info['path']}: {info['documents']} documents from {info['pages']} pages, {info['bytes'] / 1e6:.2f} MB, "
          f"sha256 {info['sha256']}")
    return info


if __name__ == "__main__":
    main()
