"""English prose paragraphs from documentation sources: POD and HTML; code dropped, one paragraph a string.

Each extractor returns (paragraphs, code_blocks): the prose-candidate paragraphs of one file in order,
whitespace collapsed, and how many code blocks it dropped. `is_prose` and `near_duplicate_key` are
the filters the corpus builder applies to every paragraph, whatever its source format.

Code is dropped where the source marks it as code, not by guessing from the text:
- POD: verbatim paragraphs (indented first line), `=begin`/`=end` and `=for` regions;
- HTML (as each package's own tools rendered it: Sphinx, DocBook, Texinfo, AsciiDoc, rustdoc...):
  everything inside <pre> (every one of those tools puts code listings there), plus tables, definition
  terms (<dt>: function signatures), headings, navigation, scripts; and a paragraph of which more than
  half the characters are inline code (<code>, <tt>, <kbd>, <samp>) counts as a code line.
"""
from __future__ import annotations

import html
import re
from html.parser import HTMLParser

MIN_CHARS = 40  # shorter paragraphs are headings, labels and fragments
MIN_LETTER_SHARE = 0.6  # of the non-space characters; below it: tables, listings, option lists
MIN_ASCII_SHARE = 0.9  # of the letters; below it: a translation (perl-doc ships a few), not English
MAX_INLINE_CODE_SHARE = 0.5  # an HTML paragraph mostly in inline code is a code line


def collapse(text: str) -> str:
    return " ".join(text.split())  # also removes \r, \x0b, \x0c, \x1c-\x1f, \x85, U+2028/9 and no-break spaces


def is_prose(paragraph: str) -> bool:
    chars = paragraph.replace(" ", "")
    letters = [c for c in chars if c.isalpha()]
    return (len(paragraph) >= MIN_CHARS and len(letters) >= MIN_LETTER_SHARE * len(chars)
            and sum(c.isascii() for c in letters) >= MIN_ASCII_SHARE * len(letters))


_IDENTIFIER = re.compile(r"[0-9_]|[a-z][A-Z]|\w\.\w|\(\)|[<>{}\[\]=/\\$@%&*|`]")


def near_duplicate_key(paragraph: str) -> str:
    """The paragraph with case, punctuation and identifier-like words (numbers, names with `_`, `.`, `()`,
    inner capitals or markup characters) erased: templated paragraphs that differ only in the name or
    version they mention ("This property is initialized by the value of the CMAKE_C_X variable ...")
    and copies that differ in punctuation or case share one key."""
    words = []
    for word in paragraph.split():
        if _IDENTIFIER.search(word):
            if not words or words[-1] != "#":
                words.append("#")
        elif w := re.sub(r"[^a-z]", "", word.lower()):
            words.append(w)
    return " ".join(words)


# ---------------------------------------------------------------------------------------------
# POD (perlpod): paragraphs are separated by blank lines
# ---------------------------------------------------------------------------------------------
_POD_ENTITIES = {"lt": "<", "gt": ">", "verbar": "|", "sol": "/"}
_POD_CODE = re.compile(r"([A-Z])(<+)(\s+)?")  # C<, or C<< followed by whitespace


def _pod_codes(text: str, pos: int = 0, closer: re.Pattern | None = None) -> tuple[str, int]:
    """Render POD formatting codes (B<>, C<< >>, L<text|target>, E<gt>, X<>...) from `pos` up to `closer`."""
    out = []
    while pos < len(text):
        if closer is not None and (m := closer.match(text, pos)):
            return "".join(out), m.end()
        m = _POD_CODE.match(text, pos)
        if m and (len(m.group(2)) == 1 or m.group(3)):
            n = len(m.group(2))
            inner_close = re.compile(">") if n == 1 else re.compile(r"\s+" + ">" * n)
            inner, pos = _pod_codes(text, m.end(), inner_close)
            out.append(_pod_render(m.group(1), inner))
            continue
        out.append(text[pos])
        pos += 1
    return "".join(out), pos


def _pod_render(code: str, inner: str) -> str:
    if code in "XZ":  # index entries and the null code
        return ""
    if code == "E":
        if inner.isdigit() or inner.lower().startswith("0x"):
            return chr(int(inner, 0))
        return _POD_ENTITIES.get(inner) or html.unescape(f"&{inner};")
    if code == "L":
        if "|" in inner:
            return inner.split("|", 1)[0]
        if "://" not in inner and "/" in inner:
            name, section = inner.split("/", 1)
            return f"{section} in {name}" if name else section.strip('"')
    return inner  # B, I, C, F, S and unknown codes: the text itself


def pod_paragraphs(source: str) -> tuple[list[str], int]:
    paragraphs, code, skip_until = [], 0, None
    for block in re.split(r"\n[ \t]*\n", source.replace("\r\n", "\n")):
        block = block.strip("\n")
        if not block:
            continue
        if skip_until is not None:  # inside =begin X ... =end X (counted once, at =begin)
            if block.startswith(skip_until):
                skip_until = None
            continue
        if block.startswith("=begin"):
            parts = block.split()
            skip_until = "=end" + (f" {parts[1]}" if len(parts) > 1 else "")
            code += 1
        elif block.startswith("=for"):
            code += 1
        elif block.startswith("=item"):  # a list item's own text ("=item * The first point ...")
            text = re.sub(r"^=item\s*(?:\*|\d+\.?)?", "", block)
            paragraphs.append(collapse(_pod_codes(text)[0]))
        elif block.startswith("="):  # headings, =over/=back, =encoding, =pod/=cut
            continue
        elif block[0] in " \t":  # a verbatim paragraph: code or a listing
            code += 1
        else:
            paragraphs.append(collapse(_pod_codes(block)[0]))
    return [p for p in paragraphs if p], code


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source", "track",
         "wbr"}
_SKIP = {"pre", "script", "style", "table", "head", "title", "nav", "header", "footer", "dt", "h1", "h2", "h3",
         "h4", "h5", "h6", "button", "select", "textarea", "svg", "math", "noscript", "form"}
_SKIP_ROLES = {"navigation", "search", "banner", "contentinfo"}
_INLINE_CODE = {"code", "tt", "kbd", "samp"}
_INLINE = {"a", "abbr", "b", "bdi", "bdo", "cite", "code", "data", "dfn", "em", "font", "i", "kbd", "mark", "q",
           "s", "samp", "small", "span", "strong", "sub", "sup", "time", "tt", "u", "var", "big", "nobr", "acronym",
           "ins", "del", "label", "br", "wbr", "img"}


class _Paragraphs(HTMLParser):
    """Text between block boundaries, outside skipped elements, with its share of inline code."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, bool]] = []  # open elements and whether each starts a skipped region
        self.text: list[str] = []
        self.code_chars = 0
        self.paragraphs: list[str] = []
        self.code_blocks = 0

    def skipping(self) -> bool:
        return any(skip for _, skip in self.stack)

    def flush(self) -> None:
        text = collapse("".join(self.text))
        if text:
            if self.code_chars > MAX_INLINE_CODE_SHARE * len(text.replace(" ", "")):
                self.code_blocks += 1
            else:
                self.paragraphs.append(text)
        self.text, self.code_chars = [], 0

    def handle_starttag(self, tag, attrs):
        if tag not in _INLINE:
            self.flush()
        if tag == "pre" and not self.skipping():
            self.code_blocks += 1
        if tag in _VOID:
            if tag == "br":
                self.text.append(" ")
            return
        if tag == "p" and self.stack and self.stack[-1][0] == "p":  # an open <p> ends where a new one starts
            self.stack.pop()
        self.stack.append((tag, tag in _SKIP or dict(attrs).get("role") in _SKIP_ROLES))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in _VOID and self.stack and self.stack[-1][0] == tag:
            self.stack.pop()

    def handle_endtag(self, tag):
        if tag not in _INLINE:
            self.flush()
        if any(t == tag for t, _ in self.stack):  # close it and whatever was left open inside it
            while self.stack.pop()[0] != tag:
                pass

    def handle_data(self, data):
        if self.skipping():
            return
        self.text.append(data)
        if any(t in _INLINE_CODE for t, _ in self.stack):
            self.code_chars += len("".join(data.split()))


def html_paragraphs(source: str) -> tuple[list[str], int]:
    parser = _Paragraphs()
    parser.feed(source)
    parser.close()
    parser.flush()
    return parser.paragraphs, parser.code_blocks


EXTRACTORS = {"pod": pod_paragraphs, "html": html_paragraphs}
