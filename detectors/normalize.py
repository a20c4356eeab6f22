"""Text normalisation shared by every detector, so that trivially obfuscated payloads are seen.

* :func:`normalize`: Unicode NFKC, invisible characters removed (and counted by class),
  Unicode tag characters decoded to the ASCII they hide, with an offset map back to the
  caller's text so evidence spans stay in the caller's coordinates.
* :func:`invisible_runs` and :func:`ansi_runs`: where the invisible characters and ANSI
  escape sequences are, for findings.
* :func:`decoded_segments`: base64, hex and URL-encoded segments decoded to text, for
  scanning only (nothing decoded is ever forwarded).
* :func:`deobfuscated_segments`: words written in leetspeak ("1gn0re prev10us") or letter
  by letter ("R E V E A L"), spelled out, for scanning only.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import functools
import html
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote

# Invisible characters by class. Tag characters (U+E0000-E007F) are separate: the printable
# ones are decoded rather than dropped, because they spell hidden ASCII ("ASCII smuggling").
_CLASSES: dict[str, str] = {
    "zero_width": "\u200b\u200c\u200d\u2060\ufeff\u180e",
    "bidi": "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069",
    "variation_selector": "\ufe00-\ufe0f\U000e0100-\U000e01ef",
    "other_format": "\u00ad\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180d\u180f\u2061-\u2065\u206a-\u206f"
    "\u3164\uffa0\ufff9-\ufffb",
}
_CLASS_RES = {name: re.compile(f"[{chars}]") for name, chars in _CLASSES.items()}
_TAG_PRINTABLE = re.compile("[\U000e0020-\U000e007e]")
_TAG_OTHER = re.compile("[\U000e0000-\U000e001f\U000e007f]")
INVISIBLE_RE = re.compile(
    "[" + "".join(_CLASSES.values()) + "\U000e0000-\U000e007f]"
)
_INVISIBLE_RUN = re.compile(INVISIBLE_RE.pattern + "+")
_NON_ASCII_RUN = re.compile(r"[^\x00-\x7f]+")
# CSI (ESC [ ... final), OSC (ESC ] ... BEL/ST), and two-character escapes; also the 8-bit CSI.
ANSI_RE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]|\x9b[0-?]*[ -/]*[@-~]")


def invisible_class(ch: str) -> str | None:
    """The class of an invisible character (``tag`` for Unicode tags), or None."""
    if "\U000e0000" <= ch <= "\U000e007f":
        return "tag"
    for name, regex in _CLASS_RES.items():
        if regex.match(ch):
            return name
    return None


@dataclass(slots=True)
class Normalized:
    """Normalised text and how to map its offsets back to the original."""

    text: str
    raw_len: int
    invisible: dict[str, int] = field(default_factory=dict)
    # Anchors: normalised offset -> original offset where a non-identity segment starts.
    _norm: list[int] = field(default_factory=list)
    _orig: list[int] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self._norm)

    @property
    def invisible_count(self) -> int:
        return sum(self.invisible.values())

    def to_original(self, start: int, end: int) -> tuple[int, int]:
        """The span of the original text that produced normalised ``[start, end)``."""
        if not self._norm:
            return start, end
        return self._map(start, is_end=False), self._map(end, is_end=True)

    def _map(self, pos: int, *, is_end: bool) -> int:
        # An end maps through the character before it, a start through the one at it;
        # either way removed characters at the edge stay outside the span.
        at = pos - 1 if is_end and pos > 0 else pos
        i = bisect.bisect_right(self._norm, at) - 1
        if i < 0:
            return pos
        if i >= len(self._norm) - 1:  # the final anchor marks the end of both texts
            return self.raw_len
        n0, o0 = self._norm[i], self._orig[i]
        n1, o1 = self._norm[i + 1], self._orig[i + 1]
        if n1 - n0 == o1 - o0:  # an identity segment
            return o0 + (pos - n0)
        # Inside a character that expanded: the span covers all of it.
        return o1 if is_end else o0


@functools.lru_cache(maxsize=8192)
def _fold_char(ch: str) -> tuple[str | None, str]:
    """``(invisible class or None, replacement)`` of one non-ASCII character."""
    cls = invisible_class(ch)
    if cls is not None:
        return cls, (chr(ord(ch) - 0xE0000) if cls == "tag" and _TAG_PRINTABLE.match(ch) else "")
    rep = unicodedata.normalize("NFKC", ch)
    # Accents and other non-spacing marks go: "ÍMPÓRTÁNT" and letters under a combining
    # underline or strike-through ("I\u0332M\u0332...") read as the plain words to a model,
    # and must to the rules too. Scripts that need their marks are not what rules read.
    stripped = "".join(c for c in unicodedata.normalize("NFD", rep) if unicodedata.category(c) != "Mn")
    return None, unicodedata.normalize("NFC", stripped) if stripped != rep else rep


def normalize(text: str) -> Normalized:
    """NFKC per character, non-spacing marks (accents, combining underlines) removed,
    invisible characters removed and counted, tag characters decoded.

    NFKC is applied character by character (compatibility forms such as fullwidth letters,
    ligatures and mathematical alphanumerics fold; combining sequences are not composed),
    which keeps the offset map exact.
    """
    if text.isascii():
        return Normalized(text, len(text))
    out: list[str] = []
    norm_at: list[int] = []
    orig_at: list[int] = []
    counts: dict[str, int] = {}
    npos = 0
    last = 0
    for run in _NON_ASCII_RUN.finditer(text):
        start, end = run.span()
        if start > last:
            norm_at.append(npos)
            orig_at.append(last)
            out.append(text[last:start])
            npos += start - last
        for j in range(start, end):
            cls, rep = _fold_char(text[j])
            if cls is not None:
                counts[cls] = counts.get(cls, 0) + 1
            norm_at.append(npos)
            orig_at.append(j)
            out.append(rep)
            npos += len(rep)
        last = end
    if last < len(text):
        norm_at.append(npos)
        orig_at.append(last)
        out.append(text[last:])
        npos += len(text) - last
    norm_at.append(npos)
    orig_at.append(len(text))
    return Normalized("".join(out), len(text), counts, norm_at, orig_at)


def invisible_runs(text: str) -> list[tuple[int, int, str]]:
    """``(start, end, class)`` of each run of invisible characters (class of its first one)."""
    if text.isascii():
        return []
    return [(m.start(), m.end(), invisible_class(m.group()[0]) or "other_format") for m in _INVISIBLE_RUN.finditer(text)]


def hidden_tag_text(text: str) -> str:
    """The ASCII spelled by the printable Unicode tag characters of ``text`` (often empty)."""
    if text.isascii():
        return ""
    return "".join(chr(ord(c) - 0xE0000) for c in _TAG_PRINTABLE.findall(text))


def ansi_runs(text: str) -> list[tuple[int, int]]:
    """Spans of ANSI / terminal escape sequences (they can hide text from a human reviewer)."""
    if "\x1b" not in text and "\x9b" not in text:
        return []
    return [m.span() for m in ANSI_RE.finditer(text)]


# -- encoded segments ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Decoded:
    """A segment of the caller's text that decodes to readable text."""

    start: int
    end: int
    encoding: str  # "base64" | "hex" | "url" | "escaped", or nested: "base64+hex"
    text: str


_MIN_DECODED = 12  # shorter decodings carry no sentence worth scanning
_BASE64 = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{20,}={0,2}")
_HEX = re.compile(r"(?<![0-9A-Fa-f])(?:[0-9A-Fa-f]{2}){12,}(?![0-9A-Fa-f])|(?:\\x[0-9A-Fa-f]{2}){8,}")
_URL = re.compile(r"[^\s\"'<>]*(?:%[0-9A-Fa-f]{2}[^\s\"'<>%]*){3,}")
_MAX_SEGMENTS = 64
_ENCODED_LAYER = re.compile(rb"[A-Za-z0-9+/=_%-]{20,}")  # bytes that could be another encoding


def _readable(data: bytes) -> str | None:
    """The text ``data`` holds if it is mostly printable UTF-8 prose, else None."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if len(text) < _MIN_DECODED:
        return None
    printable = sum(1 for c in text if c.isprintable() or c in "\n\r\t")
    letters = sum(1 for c in text if c.isalpha())
    # Random bytes that happen to be UTF-8 are rarely >95% printable and >50% letters, and
    # prose always has some whitespace or punctuation between words.
    if printable < 0.95 * len(text) or letters < 0.5 * len(text) or not re.search(r"[\s.,:;/_-]", text):
        return None
    return text


def _b64(segment: str) -> bytes | None:
    body = segment.rstrip("=")
    if len(body) % 4 == 1:
        return None
    padded = body + "=" * (-len(body) % 4)
    altchars = b"-_" if ("-" in body or "_" in body) else None
    if altchars and ("+" in body or "/" in body):
        return None
    try:
        return base64.b64decode(padded, altchars=altchars, validate=True)
    except (binascii.Error, ValueError):
        return None


def decoded_segments(text: str, *, depth: int = 2) -> list[Decoded]:
    """Segments of ``text`` that are base64, hex or URL-encoded readable text, decoded.

    Decoding is repeated up to ``depth`` levels (base64 of URL-encoded text, say); nested
    results keep the span of the outermost segment in ``text``.
    """
    found: list[Decoded] = _unescaped(text)
    layers: list[Decoded] = []  # decodings that are themselves encoded (base64 of base64)
    for start, token in _long_tokens(text):
        found.extend(_decode_token(token, start, layers if depth > 1 else None))
        if len(found) >= _MAX_SEGMENTS:
            break
    if depth > 1:
        nested: list[Decoded] = []
        for seg in found + layers:
            for inner in decoded_segments(seg.text, depth=depth - 1):
                nested.append(Decoded(seg.start, seg.end, f"{seg.encoding}+{inner.encoding}", inner.text))
        found.extend(nested)
    return found[:_MAX_SEGMENTS]


# Character references and escapes that spell printable ASCII: nobody writes "&#105;gnore",
# "&lt;IMPORTANT&gt;" or "\u0069gnore" in prose, and a model reads them as the characters.
# Angle brackets get every spelling (a hidden <IMPORTANT> block needs nothing else):
# "&lt" with or without ";", "\u{3c}", "\U0000003c", CSS "\3c ", octal "\074", "%3C".
# (Everyday references such as "&amp;" or "&nbsp;" hide nothing and are left alone.)
_ESCAPED_ASCII = re.compile(
    r"&#(?:0*(?:3[2-9]|[4-9][0-9]|1[01][0-9]|12[0-6])|[xX]0*[2-7][0-9a-fA-F]);?"
    r"|&(?:lt|gt|LT|GT);?|\\u00[2-7][0-9a-fA-F]|\\x[2-7][0-9a-fA-F]"
    r"|\\u\{0*[2-7][0-9a-fA-F]\}|\\U0{6}[2-7][0-9a-fA-F]|\\0{0,4}3[cCeE](?![0-9a-fA-F])|\\0?7[46](?![0-7])|%3[cCeE]"
)
_ESCAPE_CONTEXT = 200  # characters decoded around a cluster of escapes
_BACKSLASH_ESCAPE = re.compile(
    r"\\(?:u00|x|u\{0*|U0{6})([2-7][0-9a-fA-F])\}?|\\0{0,4}(3[cCeE])(?![0-9a-fA-F]) ?|\\0?(7[46])(?![0-7])|%(3[cCeE])"
)


def _unescape_once(text: str) -> str:
    def char(m: re.Match[str]) -> str:
        hex_code, css, octal, percent = m.groups()
        if octal is not None:
            return chr(int(octal, 8))
        return chr(int(hex_code or css or percent, 16))

    return html.unescape(_BACKSLASH_ESCAPE.sub(char, text))


def _unescaped(text: str) -> list[Decoded]:
    """Regions around character references / backslash escapes of ASCII, unescaped."""
    if "&" not in text and "\\" not in text and "%" not in text:
        return []
    spans: list[list[int]] = []
    for m in _ESCAPED_ASCII.finditer(text):
        if spans and m.start() - spans[-1][1] <= _ESCAPE_CONTEXT:
            spans[-1][1] = m.end()
        else:
            if len(spans) == _MAX_SEGMENTS:
                break
            spans.append([m.start(), m.end()])
    found: list[Decoded] = []
    for start, end in spans:
        # Widen to whole words: the sentence around the escapes is what rules need.
        lo = max(0, start - _ESCAPE_CONTEXT)
        hi = min(len(text), end + _ESCAPE_CONTEXT)
        while lo > 0 and not text[lo - 1].isspace() and start - lo < 2 * _ESCAPE_CONTEXT:
            lo -= 1
        while hi < len(text) and not text[hi].isspace() and hi - end < 2 * _ESCAPE_CONTEXT:
            hi += 1
        region = text[lo:hi]
        plain = region
        for _ in range(3):  # "&amp;#105;" is a reference to a reference
            once = _unescape_once(plain)
            if once == plain:
                break
            plain = once
        if plain != region and len(plain) >= _MIN_DECODED:
            found.append(Decoded(lo, hi, "escaped", plain))
    return found


def _long_tokens(text: str) -> list[tuple[int, str]]:
    """Whitespace-free runs of 20+ characters with their offsets: the only places an encoded
    payload can sit (encodings contain no spaces), found far faster than by regex scanning."""
    out: list[tuple[int, str]] = []
    pos = 0
    for token in text.split():
        if len(token) >= 20:
            start = text.find(token, pos)
            pos = start + len(token)
            out.append((start, token))
    return out


def _decode_token(token: str, offset: int, layers: list[Decoded] | None = None) -> list[Decoded]:
    """Readable decodings in ``token``; with ``layers``, decodings that are another
    encoding (base64 of base64, base64 of hex) are added there, to be decoded again."""
    found: list[Decoded] = []
    for m in _BASE64.finditer(token):
        segment = m.group()
        # Identifiers, paths and words are base64 alphabet too: demand a mix of cases/digits.
        if segment.isalpha() and (segment.islower() or segment.isupper()):
            continue
        data = _b64(segment)
        decoded = _readable(data) if data else None
        if decoded:
            found.append(Decoded(offset + m.start(), offset + m.end(), "base64", decoded))
        elif data and layers is not None and _ENCODED_LAYER.fullmatch(data):
            layers.append(Decoded(offset + m.start(), offset + m.end(), "base64", data.decode("ascii")))
    for m in _HEX.finditer(token):
        data = bytes.fromhex(m.group().replace("\\x", ""))
        decoded = _readable(data)
        if decoded:
            found.append(Decoded(offset + m.start(), offset + m.end(), "hex", decoded))
        elif layers is not None and _ENCODED_LAYER.fullmatch(data):
            layers.append(Decoded(offset + m.start(), offset + m.end(), "hex", data.decode("ascii")))
    if "%" in token:
        for m in _URL.finditer(token):
            decoded = _unquote(m.group())
            if decoded and decoded != m.group() and len(decoded) >= _MIN_DECODED:
                found.append(Decoded(offset + m.start(), offset + m.end(), "url", decoded))
    return found


def _unquote(segment: str) -> str | None:
    try:
        return unquote(segment, errors="strict")
    except UnicodeDecodeError:
        return None


# Letters of other scripts drawn like Latin ones (Cyrillic, Greek, IPA, small capitals), as
# they occur in spoofed words and identifiers; one character for one, so offsets stay put.
_LOOKALIKE_PAIRS = {
    "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "у": "y", "х": "x", "і": "i", "ј": "j", "ѕ": "s",
    "ԁ": "d", "ԛ": "q", "ԝ": "w", "һ": "h", "ӏ": "l", "ѡ": "w",
    "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C", "Т": "T",
    "У": "Y", "Х": "X", "І": "I", "Ј": "J", "Ѕ": "S",
    "ο": "o", "ν": "v", "ι": "i", "κ": "k", "ρ": "p", "α": "a", "τ": "t", "υ": "u",
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O",
    "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X",
    "ı": "i", "ǀ": "l", "ɑ": "a", "ʀ": "r", "ɡ": "g", "ℓ": "l", "ɩ": "i", "ʏ": "y", "ɪ": "i", "ʟ": "l",
    "ɴ": "n", "ᴏ": "o", "ᴄ": "c", "ᴅ": "d", "ᴇ": "e", "ᴍ": "m", "ᴘ": "p", "ᴛ": "t", "ᴜ": "u", "ᴠ": "v",
    "ᴡ": "w", "ᴢ": "z", "ʜ": "h", "ɢ": "g", "ĸ": "k", "ꞵ": "b",
}
LOOKALIKES = str.maketrans(_LOOKALIKE_PAIRS)


def fold_lookalikes(text: str) -> str:
    """``text`` with lookalike letters of other scripts read as the Latin letters they imitate
    (same length: offsets into it are offsets into ``text``)."""
    return text if text.isascii() else text.translate(LOOKALIKES)


# -- leetspeak and spaced-out letters -------------------------------------------------------

_LEET = str.maketrans("013457@$", "oieastas")
_LEET_HINT = re.compile(r"[A-Za-z][013457@$]|[013457@$][A-Za-z]")
_LEET_TOKEN = re.compile(r"(?<![\w@$])[A-Za-z013457@$]{2,}(?![\w@$])")
# Gaps between spelled-out letters: one separator (a space, "_*.-", or the backslash, slash, bar
# or plus of "\I\ \h\a\v\e", seen in the HackAPrompt set), a dot and spaces, two or three
# spaces, or a separator, a space and the separator again (where words end in "\I\ \h...").
_SPACED = re.compile(
    r"(?<![A-Za-z])[A-Za-z](?:(?:[ _*.\\/|+-]|\. {1,2}| {2,3}|\\ \\|/ /|\| \||\+ \+)[A-Za-z]){3,}(?![A-Za-z])"
)
_SPACED_GAP = re.compile(r"[^A-Za-z]+")
_DEOBFUSCATION_CONTEXT = 120  # characters kept on each side of the rewritten words
_MIN_LEET_WORDS = 2


def known_words(vocabulary: Iterable[str]) -> frozenset[str]:
    """The whole English words of a WordPiece vocabulary (three ASCII letters or more): what an
    obfuscated word must spell out for :func:`deobfuscated_segments`."""
    return frozenset(w for w in vocabulary if len(w) >= 3 and w.isascii() and w.isalpha())


def deobfuscated_segments(text: str, words: frozenset[str] | set[str], *, short_words: bool = False) -> list[Decoded]:
    """Regions of ``text`` with words spelled in leetspeak or letter by letter, rewritten.

    Leetspeak: a token counts if it is not a word as written and is one (in ``words``, lower
    case) once its digits and symbols are read as letters ("pl34s3" -> "please"); a region
    needs two such tokens, so version strings, hashes and identifiers ("ipv4", "x86",
    "sha256") stay as they are. With ``short_words``, two-letter tokens ("d0", "1t") inside
    such a region are read too, for rules that need "do not tell" (the classifier reads no
    better with them).

    Letter by letter ("R E V E A L. H I D D E N", "r-e-a-d y-o-u-r", "\\I\\ \\h\\a\\v\\e"): the most
    common gap joins letters and any other gap ends a word; a run needs one known word of
    four letters or more.

    Each finding is a region around the rewritten words, in the caller's offsets, with the
    encoding "leet" or "spaced".
    """
    found: list[Decoded] = []
    if _LEET_HINT.search(text):
        hits, short = [], []
        for m in _LEET_TOKEN.finditer(text):
            token = m.group()
            if token.isalpha():
                continue
            plain = token.translate(_LEET).lower()
            if len(token) == 2:  # "d0", "1t", "t0": read only among longer words that qualify
                if short_words and plain.isalpha():
                    short.append((m.start(), m.end(), plain))
            elif plain.isalpha() and plain in words and token.lower() not in words:
                hits.append((m.start(), m.end(), plain))
        if len(hits) >= _MIN_LEET_WORDS:
            lo, hi = hits[0][0] - _DEOBFUSCATION_CONTEXT, hits[-1][1] + _DEOBFUSCATION_CONTEXT
            hits = sorted(hits + [h for h in short if lo <= h[0] and h[1] <= hi])
            found.extend(_rewritten(text, hits, "leet"))
    hits = []
    for m in _SPACED.finditer(text):
        run = m.group()
        gaps = _SPACED_GAP.findall(run)
        joiner = max(set(gaps), key=gaps.count)  # the separator between letters; others end words
        spelled, word = [], run[0]
        for gap, letter in zip(gaps, _SPACED_GAP.split(run)[1:]):
            if gap != joiner:
                spelled.append(word.lower())
                word = ""
            word += letter
        spelled.append(word.lower())
        if any(len(w) >= 4 and w in words for w in spelled):
            hits.append((m.start(), m.end(), " ".join(spelled)))
            if len(hits) >= _MAX_SEGMENTS:
                break
    if hits:
        found.extend(_rewritten(text, hits, "spaced"))
    return found[:_MAX_SEGMENTS]


def _rewritten(text: str, hits: list[tuple[int, int, str]], encoding: str) -> list[Decoded]:
    """One segment per cluster of nearby hits: the region around them with each rewritten."""
    clusters: list[list[tuple[int, int, str]]] = []
    for hit in hits:
        if clusters and hit[0] - clusters[-1][-1][1] <= _DEOBFUSCATION_CONTEXT:
            clusters[-1].append(hit)
        else:
            clusters.append([hit])
    out = []
    for cluster in clusters:
        lo = max(0, cluster[0][0] - _DEOBFUSCATION_CONTEXT)
        hi = min(len(text), cluster[-1][1] + _DEOBFUSCATION_CONTEXT)
        parts, pos = [], lo
        for start, end, plain in cluster:
            parts += [text[pos:start], plain]
            pos = end
        parts.append(text[pos:hi])
        out.append(Decoded(lo, hi, encoding, "".join(parts)))
    return out
