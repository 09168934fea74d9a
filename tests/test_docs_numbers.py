"""Every number in the measured docs is found in a committed JSON file that the page cites.

Checked: docs/quality.md, docs/pretrained.md and docs/study.md (one test each), and the README's
paragraphs (table rows) that link one of them, against the sources of the page they link (one
test per linked page).

**What is a number.** Every decimal number in the prose, tables, headings and image alt texts:
``148.6``, ``1,152`` (thousands separators), ``1e-3``, ``2.9 × 10¹⁴`` (mantissa and power of
ten), ``16k`` (thousands). Signs are ignored (``0-255``, ``−49.5`` and arrows make them
ambiguous). Not numbers: anything in fenced code blocks and inline code spans (commands, config
snippets, formulas: their numbers are the page's settings, below), link targets and image paths,
HTML comments, dates (``2026-12-04``), the year after "et al.", section and figure references
(``§3``, ``appendix C.3``, ``Figure 2``), version strings (``1.1.0``), digits that are part of a
name (``fluent-emoji-3d``, ``EDM2``, ``relay-L0.85``, ``16to64``: a digit run with a letter, digit,
``_`` or ``.`` right before it, or a ``-`` right after a letter, or with a letter or ``_`` right
after it), and the scale markers ``×1e3`` (anywhere) and ``×10³`` (after a name, not after a
number, where ``2.9 × 10¹⁴`` is a number).

**Sources.** A number in a section (the text under a heading, down to the next heading) must match
a value of the section's sources:

1. the JSON files cited by the section or by an enclosing section (the page's introduction
   encloses all of it; a ``##`` section encloses its ``###`` sections): a Markdown link to a
   ``.json`` file (``[images/x.json](images/x.json)``, resolved from the page's folder; a linked
   file that does not exist is a failure), or an inline-code path of a committed ``.json`` file
   (``relaydiff/configs/stage1_16.json``, resolved from the repository root or ``src/``; a code
   path that names no file, such as ``cascade.json``, cites nothing). Every numeric leaf of the
   file counts (booleans and numbers inside strings do not);
2. the page's settings: the numbers in its fenced code blocks and inline code spans (the
   commands and configs the figures were made with, so ``--set total_images=112000`` backs
   "112,000 images");
3. the derived values of the section or an enclosing section (below).

**Matching, rounding.** A number written with ``k`` decimals matches a source value ``v`` when
``round(v × s, k)`` equals it, with Python's ``round``: round-half-even applied to the exact binary
value of the stored float (so ``48.14914…`` is ``48.1``, and ``round(2.675, 2)`` is ``2.67``), i.e.
the digits ``f"{v × s:.{k}f}"`` prints. The scale ``s`` comes from the unit written after the
number: ``%`` 1 or 100; ``M`` (millions) 1e-6; ``GFLOP`` 1e-9; ``TFLOP`` 1e-12; ``MB`` 1 or 1e-6
(bytes); ``GB`` 1 or 1e-9 (bytes); ``min``/``minutes`` 1, 1/60 (from seconds) or 60 (from hours);
``ms`` 1 or 1e3; no unit: 1 or 1e3 (KID and SWD are written ×1e3 on these pages, as their tables
say). In a table, the column's header adds its scale: ``×1e3`` 1e3, ``×1e4`` 1e4, ``GFLOP`` 1e-9,
``TFLOP`` 1e-12, ``%`` 100, ``MB`` 1e-6, ``GB`` 1e-9, ``min`` 1/60 (from seconds; a "training
GFLOPs" column shows FLOPs × 1e-9). A
mantissa with a power of ten (``2.9 × 10¹⁴``, ``2.0e14``) is compared at the mantissa's decimals
(``round(v / 1e14, 1) == 2.9``); ``16k`` as ``round(v / 1e3) == 16``.

**Derived numbers** (differences, ratios, sums, products) are not matched by themselves: the
page states them in an HTML comment in the same section, ``<!-- derived: 1.8 = 148.6 - 146.8 -->``
(several separated by ``;``). The left side is the number as the text writes it (with its unit);
the right side an expression of ``+ - * / ( )``, numbers and the constant ``ln2``. Every number of
the expression must itself match a source of the section (rule above, no unit), except the
integers 0 to 10 and powers of ten, which are exact constants (an offset of 1, bytes per
value, a unit change). The expression is evaluated with the numbers as written, and its value
must match the left side at the left side's rounding; it then is a source of the section.

**Exceptions** that are neither measured nor configured (code constants, thresholds of a test)
are listed per page in ``ALLOWED``: a snippet of the page's text with the reason; the numbers in
the snippet are not checked, and a snippet the page no longer contains is a failure.

The last tests show that the check fails: a changed figure, a figure whose JSON is cited only by
another section, a wrong derivation and a wrong rounding are reported.
"""

from __future__ import annotations

import ast
import itertools
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["docs/quality.md", "docs/pretrained.md", "docs/study.md"]

# Numbers that are neither measurements nor settings of a committed config: snippet → reason.
ALLOWED: dict[str, dict[str, str]] = {
    "docs/quality.md": {
        "profile error above 5 %":
            "the refusal threshold, relaydiff.training.posthoc_ema.MAX_RESIDUAL",
        "one outside (0, 0.288)": "the range of σ_rel checked in relaydiff.training.posthoc_ema",
        "limit of 1 %": "the tolerance asserted in tests/test_posthoc_ema.py",
    },
    "docs/pretrained.md": {},
    "docs/study.md": {},
}

SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁺", "0123456789-+")
SUP = "⁰¹²³⁴⁵⁶⁷⁸⁹"
NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
# A number that is not part of a name (module docstring).
TOKEN = re.compile(
    rf"(?<![\w.])(?<![A-Za-z_]-)(?P<num>{NUM})"
    rf"(?:(?P<exp>e[+-]?\d+)|\s?×\s?10(?P<sup>[⁻⁺]?[{SUP}]+))?(?P<k>k)?(?![\w.]\w|\w)")
UNIT = re.compile(r"\s?(?P<unit>%|GFLOP|TFLOP|GB|MB|M(?![\w])|minutes|min(?![\w])|ms(?![\w]))")
SCALES = {"%": (1, 100), "M": (1e-6,), "GFLOP": (1e-9,), "TFLOP": (1e-12,), "MB": (1, 1e-6),
          "GB": (1, 1e-9),
          "min": (1, 1 / 60, 60), "minutes": (1, 1 / 60, 60), "ms": (1, 1e3), "": (1, 1e3)}
CONSTANTS = {"ln2": math.log(2)}

FENCE = re.compile(r"^```.*?^```[^\n]*$", re.M | re.S)
COMMENT = re.compile(r"<!--(.*?)-->", re.S)
DERIVED = re.compile(r"^\s*derived:(.*)$", re.S)
CODE = re.compile(r"``(.+?)``|`([^`\n]+)`")
LINK = re.compile(r"!?\[([^\]]*)\]\(([^)\s]+)\)")
URL = re.compile(r"https?://\S+")
HEADING = re.compile(r"^(#{1,6})\s")
SKIPPED = [
    re.compile(r"\b\d{4}-\d{2}-\d{2}\b"),  # dates
    re.compile(r"(?<=et al\. )\d{4}|(?<=et al\., )\d{4}"),  # years of citations
    re.compile(r"(?:§\s?|\b(?:[Aa]ppendix|Figure|Fig\.|Table|Eq\.) )[A-Z]?\.?\d+(?:\.\d+)*"),
    re.compile(r"\b\d+\.\d+\.\d+\b"),  # versions
    re.compile(r"×\s?1e\d+"),  # scale markers: "KID ×1e3", "106.9 ×1e3"
    re.compile(rf"(?<![\d,.]\s)(?<![\d,.])×\s?10[{SUP}]+"),  # "KID×10³", not "2.9 × 10¹⁴"
]


@dataclass(frozen=True)
class Number:
    text: str
    mantissa: float
    decimals: int
    factor: float
    unit: str
    column: tuple[float, ...] = ()  # scales of the table column's header

    def matches(self, value: float, scales: Iterable[float] | None = None) -> bool:
        for s in self.scales() if scales is None else scales:
            if round(abs(value) * s / self.factor, self.decimals) == self.mantissa:
                return True
        return False

    def scales(self) -> tuple[float, ...]:
        return SCALES[self.unit] + self.column


def parse_number(m: re.Match, after: str) -> Number:
    num = m.group("num")
    decimals = len(num.split(".")[1]) if "." in num else 0
    factor = 1.0
    if m.group("exp"):
        factor = 10.0 ** int(m.group("exp")[1:])
    elif m.group("sup"):
        factor = 10.0 ** int(m.group("sup").translate(SUPERSCRIPTS))
    if m.group("k"):
        factor = 1e3
    u = UNIT.match(after)
    return Number(m.group(0), float(num.replace(",", "")), decimals, factor, u.group("unit") if u else "")


HEADER_SCALES = [(re.compile(r"×\s?1e3|×\s?10³"), 1e3), (re.compile(r"×\s?1e4|×\s?10⁴"), 1e4),
                 (re.compile(r"GFLOP"), 1e-9), (re.compile(r"TFLOP"), 1e-12), (re.compile(r"%"), 100),
                 (re.compile(r"\bMB\b"), 1e-6),
                 (re.compile(r"\bGB\b"), 1e-9), (re.compile(r"\bmin\b"), 1 / 60)]


def column_scales(raw: str) -> dict[int, tuple[float, ...]]:
    """Offset of every table cell's first character → the scales its column header names."""
    out: dict[int, tuple[float, ...]] = {}
    lines, offset = [], 0
    for line in raw.splitlines(keepends=True):
        lines.append((offset, line))
        offset += len(line)
    k = 0
    while k + 1 < len(lines):
        header, sep = lines[k][1], lines[k + 1][1]
        if not (header.lstrip().startswith("|") and re.fullmatch(r"\s*\|[\s|:-]+\|?\s*", sep)):
            k += 1
            continue
        names = header.strip().strip("|").split("|")
        scales = [tuple(s for pattern, s in HEADER_SCALES if pattern.search(n)) for n in names]
        k += 2
        while k < len(lines) and lines[k][1].lstrip().startswith("|"):
            start, line = lines[k]
            cells = [m.start() for m in re.finditer(r"\|", line)]
            for col, (a, b) in enumerate(itertools.pairwise(cells)):
                if col < len(scales) and scales[col]:
                    for pos in range(start + a + 1, start + b):
                        out[pos] = scales[col]
            k += 1
    return out


def numbers_in(text: str) -> list[tuple[int, Number]]:
    """``(offset, number)`` of every number in ``text`` (already stripped of code and links)."""
    return [(m.start(), parse_number(m, text[m.end():m.end() + 12])) for m in TOKEN.finditer(text)]


def json_values(obj) -> list[float]:
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return []
    if isinstance(obj, int | float):
        return [float(obj)] if math.isfinite(obj) else []
    items = obj.values() if isinstance(obj, dict) else obj
    return [v for x in items for v in json_values(x)]


def code_values(code: str) -> list[float]:
    """Every digit run of a code text, as a number (``ckpt-00000500`` is 500, ``1e-3`` 0.001)."""
    out = []
    for m in re.finditer(r"\d+(?:\.\d+)?(?:e[+-]?\d+)?", code):
        try:
            out.append(float(m.group(0)))
        except ValueError:
            pass
    return out


def blank(text: str, start: int, end: int, keep: str = "") -> str:
    """``text`` with ``[start, end)`` replaced by ``keep`` padded with spaces (newlines kept)."""
    span = text[start:end]
    filler = "".join("\n" if c == "\n" else " " for c in span[len(keep):])
    return text[:start] + keep + filler + text[end:]


@dataclass
class Section:
    level: int
    start: int  # offset in the page
    parent: Section | None
    cited: list[Path] = field(default_factory=list)
    derived: list[float] = field(default_factory=list)

    def chain(self) -> list[Section]:
        return [self] + (self.parent.chain() if self.parent else [])


@dataclass
class Page:
    path: Path
    text: str  # stripped: code, comments, links and skipped spans blanked (offsets kept)
    raw: str
    sections: list[Section]
    settings: list[float]
    comments: list[tuple[int, str]]  # (offset, derived-comment body)
    code_spans: list[tuple[int, str]]
    problems: list[str] = field(default_factory=list)
    columns: dict[int, tuple[float, ...]] = field(default_factory=dict)  # column_scales

    def line(self, offset: int) -> int:
        return self.raw.count("\n", 0, offset) + 1

    def section_at(self, offset: int) -> Section:
        return [s for s in self.sections if s.start <= offset][-1]


def resolve_json(target: str, page_dir: Path) -> Path | None:
    target = target.split("#")[0]
    if not target.endswith(".json"):
        return None
    return (page_dir / target).resolve()


def resolve_code_path(code: str) -> Path | None:
    code = code.strip()
    if not re.fullmatch(r"[\w./-]+\.json", code):
        return None
    for base in (ROOT, ROOT / "src"):
        if (base / code).is_file():
            return base / code
    return None


def parse_page(path: Path, raw: str, allowed: dict[str, str]) -> Page:
    text = raw
    settings: list[float] = []
    for m in FENCE.finditer(raw):
        settings += code_values(m.group(0))
        text = blank(text, m.start(), m.end())
    comments = []
    for m in COMMENT.finditer(text):
        d = DERIVED.match(m.group(1))
        if d:
            comments.append((m.start(), d.group(1)))
        text = blank(text, m.start(), m.end())
    code_spans = []
    for m in CODE.finditer(text):
        code = m.group(1) or m.group(2)
        settings += code_values(code)
        code_spans.append((m.start(), code))
        text = blank(text, m.start(), m.end())
    links = []
    for m in LINK.finditer(text):
        links.append((m.start(), m.group(2)))
        text = blank(text, m.start(), m.end(), " " + m.group(1) + " ")
    for pattern in [URL, *SKIPPED]:
        for m in pattern.finditer(text):
            text = blank(text, m.start(), m.end())
    problems = []
    for snippet in allowed:
        found = [m.start() for m in re.finditer(re.escape(snippet), text)]
        if not found:
            problems.append(f"ALLOWED snippet {snippet!r} is not in the page any more")
        for start in found:
            text = blank(text, start, start + len(snippet))

    sections = [Section(0, 0, None)]
    offset = 0
    for line in raw.splitlines(keepends=True):
        h = HEADING.match(line)
        if h and text[offset:offset + len(line)].strip():  # not inside a code block
            level = len(h.group(1))
            parent = sections[-1]
            while parent.level >= level:
                parent = parent.parent
            sections.append(Section(level, offset, parent))
        offset += len(line)
    page = Page(path, text, raw, sections, settings, comments, code_spans, problems,
                column_scales(raw))
    for start, target in links:
        p = resolve_json(target, path.parent)
        if p is not None:
            page.section_at(start).cited.append(p)
    for start, code in code_spans:
        p = resolve_code_path(code)
        if p is not None:
            page.section_at(start).cited.append(p)
    return page


_json_cache: dict[Path, list[float]] = {}


def values_of(path: Path) -> list[float]:
    if path not in _json_cache:
        _json_cache[path] = json_values(json.loads(path.read_text(encoding="utf-8")))
    return _json_cache[path]


def pool(page: Page, sections: Iterable[Section]) -> tuple[list[float], list[str]]:
    """The source values of ``sections`` (with their enclosing sections) and missing files."""
    values, missing = list(page.settings), []
    seen: set[int] = set()
    for s in sections:
        for t in s.chain():
            if id(t) in seen:
                continue
            seen.add(id(t))
            values += t.derived
            for p in t.cited:
                if p.is_file():
                    values += values_of(p)
                else:
                    missing.append(str(p))
    return values, missing


def evaluate(expr: str, operand_ok) -> tuple[float | None, str]:
    """Value of a derived expression; each operand is checked with ``operand_ok``."""
    names: dict[str, float] = dict(CONSTANTS)
    bad = []

    def substitute(m: re.Match) -> str:
        literal = m.group(0)
        value = float(literal.replace(",", ""))
        constant = (value.is_integer() and 0 <= value <= 10) or (
            value > 0 and math.log10(value).is_integer())
        if not constant and not operand_ok(literal, value):
            bad.append(literal)
        name = f"_o{len(names)}"
        names[name] = value
        return name

    code = re.sub(rf"(?<![\w.])(?:{NUM})(?:e[+-]?\d+)?", substitute, expr.replace("×", "*"))
    if bad:
        return None, f"operands not in the section's sources: {', '.join(bad)}"
    try:
        tree = ast.parse(code.strip(), mode="eval")
    except SyntaxError:
        return None, f"not an expression: {expr.strip()!r}"
    allowed = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Name, ast.Load, ast.Add, ast.Sub,
               ast.Mult, ast.Div, ast.USub, ast.UAdd)
    if not all(isinstance(n, allowed) for n in ast.walk(tree)) or any(
            isinstance(n, ast.Name) and n.id not in names for n in ast.walk(tree)):
        return None, f"only + - * / ( ), numbers and {', '.join(CONSTANTS)}: {expr.strip()!r}"
    return float(eval(compile(tree, "<derived>", "eval"), {"__builtins__": {}}, names)), ""


def operand_check(values: list[float]):
    """Whether an operand, as written, matches one of ``values`` (rule of the module docstring)."""
    def ok(literal: str, value: float) -> bool:
        m = TOKEN.fullmatch(literal)
        if m is None:
            return any(abs(x - value) <= 1e-12 * abs(value) for x in values)
        number = parse_number(m, "")
        return any(number.matches(x) for x in values)
    return ok


def apply_derived(page: Page) -> list[str]:
    """Check the page's derived comments and add their values to their sections."""
    failures = []
    for offset, body in page.comments:
        section = page.section_at(offset)
        values, _ = pool(page, [section])
        for part in filter(str.strip, body.split(";")):
            where = f"{page.path.name}:{page.line(offset)}: derived {part.strip()!r}"
            lhs, sep, rhs = part.partition("=")
            found = numbers_in(lhs.strip())
            if not sep or len(found) != 1:
                failures.append(f"{where}: write one number = expression")
                continue
            number = found[0][1]
            value, problem = evaluate(rhs, operand_check(values))
            if value is None:
                failures.append(f"{where}: {problem}")
            elif not number.matches(value):
                failures.append(f"{where}: the expression gives {value:.6g}")
            else:
                section.derived.append(value)
    return failures


def check_units(page: Page, units: list[tuple[int, int]], extra_sources: list[Section] | None = None
                ) -> list[str]:
    """Numbers of ``page.text[start:end]`` for each unit not matched by its sources."""
    failures = []
    for start, end in units:
        for off, number in numbers_in(page.text[start:end]):
            at = start + off
            number = replace(number, column=page.columns.get(at, ()))
            values, missing = pool(page, [page.section_at(at), *(extra_sources or [])])
            failures += [f"{page.path.name}: cited file {p} does not exist" for p in missing]
            if not any(number.matches(v) for v in values):
                line_start = page.raw.rfind("\n", 0, at) + 1
                line_end = page.raw.find("\n", at)
                context = page.raw[line_start:line_end if line_end >= 0 else None].strip()
                failures.append(f"{page.path.name}:{page.line(at)}: {number.text!r} in "
                                f"{context[:160]!r}")
    return sorted(set(failures), key=failures.index)


def check_page(path: Path, raw: str, allowed: dict[str, str]) -> list[str]:
    page = parse_page(path, raw, allowed)
    failures = list(page.problems)
    if not any(s.cited for s in page.sections):
        failures.append(f"{path.name}: cites no JSON file")
    failures += apply_derived(page)
    return failures + check_units(page, [(0, len(page.text))])


def readme_units(raw: str) -> list[tuple[int, int]]:
    """Paragraphs outside code blocks; a table's rows one by one."""
    units, offset = [], 0
    fences = [(m.start(), m.end()) for m in FENCE.finditer(raw)]
    for block in re.split(r"(\n\s*\n)", raw):
        start, offset = offset, offset + len(block)
        if not block.strip() or any(a <= start < b for a, b in fences):
            continue
        lines = block.splitlines(keepends=True)
        if all(line.lstrip().startswith("|") for line in lines if line.strip()):
            pos = start
            for line in lines:
                units.append((pos, pos + len(line)))
                pos += len(line)
        else:
            units.append((start, offset))
    return units


def check_readme(doc: str) -> list[str]:
    """README paragraphs that link ``doc``, against the sources of every page they link."""
    raw = (ROOT / "README.md").read_text(encoding="utf-8")
    readme = parse_page(ROOT / "README.md", raw, {})
    failures = apply_derived(readme)
    pages = {d: parse_page(ROOT / d, (ROOT / d).read_text(encoding="utf-8"), ALLOWED.get(d, {}))
             for d in PAGES}
    for page in pages.values():
        apply_derived(page)
    checked = 0
    for start, end in readme_units(raw):
        linked = [d for d in PAGES if f"]({d}" in raw[start:end]]
        if doc not in linked:
            continue
        checked += 1
        extra = [s for d in linked for s in pages[d].sections]
        # the linked pages' settings count too
        saved = readme.settings
        readme.settings = saved + [v for d in linked for v in pages[d].settings]
        failures += check_units(readme, [(start, end)], extra)
        readme.settings = saved
    return failures if checked else [f"README.md: no paragraph links {doc}"]


def page_case(doc: str) -> list[str]:
    path = ROOT / doc
    return check_page(path, path.read_text(encoding="utf-8"), ALLOWED[doc])


@pytest.mark.parametrize("doc", PAGES)
def test_page_numbers_come_from_its_json(doc):
    failures = page_case(doc)
    assert not failures, f"{len(failures)} numbers of {doc} not in its cited JSON:\n" + "\n".join(failures)


README_CASES = [d for d in PAGES if f"]({d}" in (ROOT / "README.md").read_text(encoding="utf-8")]


@pytest.mark.parametrize("doc", README_CASES)
def test_readme_numbers_come_from_the_linked_pages_json(doc):
    failures = check_readme(doc)
    assert not failures, f"{len(failures)} numbers of README.md:\n" + "\n".join(failures)


# The check can fail.

SYNTHETIC = """# Page

Intro, citing [images/a.json](images/a.json): FID 148.6 and KID 84.4 ×1e3, 1,152 samples.

## Other

Cites [images/b.json](images/b.json): 2.9 × 10¹⁴ FLOPs, 16k images, 7.7 M parameters, 12 %.
<!-- derived: 1.8 = 148.6 - 146.8 -->
1.8 points apart.

## Third

FID 148.6 again.
"""


@pytest.fixture
def synthetic(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.json").write_text(json.dumps(
        {"fid": 148.62085017786768, "kid": 0.08437171285504647, "n": 1152, "bicubic": 146.828}))
    (tmp_path / "images" / "b.json").write_text(json.dumps(
        {"flops": 2.88e14, "images": 16000, "params": 7663235, "share": 0.12}))
    page = tmp_path / "page.md"

    def check(text: str) -> list[str]:
        return check_page(page, text, {})
    return check


def test_synthetic_page_passes(synthetic):
    assert synthetic(SYNTHETIC) == []


@pytest.mark.parametrize("old,new,shown", [
    ("FID 148.6 and", "FID 148.7 and", "'148.7'"), ("KID 84.4", "KID 84.5", "'84.5'"),
    ("1,152", "1,153", "'1,153'"), ("2.9 ×", "3.0 ×", "'3.0 × 10¹⁴'"), ("16k", "17k", "'17k'"),
    ("7.7 M", "7.6 M", "'7.6'"), ("12 %", "13 %", "'13'"), ("1.8 points", "1.7 points", "'1.7'")])
def test_a_changed_figure_is_caught(synthetic, old, new, shown):
    failures = synthetic(SYNTHETIC.replace(old, new, 1))
    assert len(failures) == 1 and shown in failures[0], failures


def test_a_figure_cited_only_by_another_section_is_caught(synthetic):
    # 148.6 is in a.json, which the introduction cites: a source everywhere below it (the test
    # above); 16,000 is in b.json, which only "Other" cites: not a source of "Third".
    failures = synthetic(SYNTHETIC.replace("FID 148.6 again.", "16,000 images again."))
    assert len(failures) == 1 and "'16,000'" in failures[0], failures


def test_a_wrong_derivation_is_caught(synthetic):
    failures = synthetic(SYNTHETIC.replace("1.8 = 148.6 - 146.8", "1.9 = 148.6 - 146.8"))
    assert any("expression gives 1.8" in f for f in failures), failures
    failures = synthetic(SYNTHETIC.replace("1.8 = 148.6 - 146.8", "1.8 = 148.6 - 146.7"))
    assert any("146.7" in f for f in failures), failures


def test_rounding_is_python_round_of_the_stored_float():
    def number(text: str, after: str = "") -> Number:
        return parse_number(TOKEN.fullmatch(text), after)

    assert number("48.1").matches(48.14914140537002) and not number("48.2").matches(48.14914140537002)
    assert number("2.67").matches(2.675, [1]) and not number("2.68").matches(2.675, [1])
    assert number("0.002").matches(0.0017693895606015924)
    assert number("80.60").matches(80.6004741145789) and not number("80.6").matches(80.65, [1])
    # half to even: 309.5 and 310.5 both print as 310
    assert number("310").matches(309.5, [1]) and number("310").matches(310.5, [1])
    assert not number("311").matches(310.5, [1])


def test_a_changed_figure_of_a_real_page_is_caught():
    raw = (ROOT / "docs/pretrained.md").read_text(encoding="utf-8")
    assert "| 148.6 |" in raw
    failures = check_page(ROOT / "docs/pretrained.md", raw.replace("| 148.6 |", "| 148.4 |", 1),
                          ALLOWED["docs/pretrained.md"])
    assert any("'148.4'" in f for f in failures), failures
