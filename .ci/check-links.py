#!/usr/bin/env python3
"""Check the relative links of the repository's Markdown documentation.

Scans README.md and docs/*.md (or the Markdown files given as arguments) for link and image
targets: inline ones, ``[text](target)`` and ``![alt](target)``, and reference definitions,
``[label]: target``. Targets that start with ``http://``, ``https://`` or ``mailto:``, and
pure ``#anchor`` targets, are skipped. Every other target must resolve, relative to the
Markdown file that holds it (or to the repository root when it starts with ``/``, as on
GitHub), to a file or directory inside the repository. When the target is a Markdown file
with a ``#fragment``, the fragment must also be the anchor of one of that file's headings,
computed with GitHub's rules: the heading's text, lowercased, with punctuation other than
``-`` and ``_`` removed and spaces turned into ``-``; a repeated heading gets ``-1``,
``-2``... Headings and links inside fenced code blocks and inline code spans do not count.

Prints each broken link as ``FILE:LINE: target (reason)`` and exits 1 if there is any;
otherwise prints a one-line summary and exits 0. Python 3 standard library only.

Usage, from anywhere in the repository:

    python3 .ci/check-links.py [FILE.md ...]
"""

from __future__ import annotations

import re
import sys
import unicodedata
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parent.parent
SKIPPED_PREFIXES = ("http://", "https://", "mailto:")

FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})")
ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t]*$")
ATX_CLOSING = re.compile(r"(?:^|[ \t]+)#+[ \t]*$")
SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
REFERENCE_DEFINITION = re.compile(
    r"^ {0,3}\[((?:[^\[\]\\]|\\.)+)\]:[ \t]*(<[^>\n]*>|\S+)", re.MULTILINE
)
# The opening of an inline link or image: `[`, text with at most one level of nested
# brackets, `](`. The destination is parsed by hand (angle brackets, balanced parentheses).
LINK_OPENING = re.compile(r"(?<!\\)!?\[((?:[^\[\]\\]|\\.|\[(?:[^\[\]\\]|\\.)*\])*)\]\(")


def mask_fences(text: str) -> str:
    """Blank out fenced code blocks, keeping offsets and newlines."""
    lines = text.split("\n")
    fence: str | None = None
    for i, line in enumerate(lines):
        match = FENCE.match(line)
        if fence is None:
            if match:
                fence = match.group(1)
                lines[i] = " " * len(line)
        else:
            closing = match is not None and match.group(1)[0] == fence[0] and \
                len(match.group(1)) >= len(fence) and \
                line.strip() == match.group(1)
            lines[i] = " " * len(line)
            if closing:
                fence = None
    return "\n".join(lines)


def mask_code(text: str) -> str:
    """Blank out fenced code blocks and inline code spans, keeping offsets and newlines."""
    text = mask_fences(text)
    out = list(text)
    i = 0
    n = len(text)
    while i < n:
        if text[i] == "\\":
            i += 2
            continue
        if text[i] != "`":
            i += 1
            continue
        j = i
        while j < n and text[j] == "`":
            j += 1
        run = j - i
        # Find a closing run of exactly the same length, within the same paragraph.
        k = j
        closed = -1
        while k < n:
            if text.startswith("\n\n", k) or text.startswith("\n \n", k):
                break
            if text[k] == "`":
                m = k
                while m < n and text[m] == "`":
                    m += 1
                if m - k == run:
                    closed = k
                    break
                k = m
                continue
            k += 1
        if closed < 0:
            i = j
            continue
        for p in range(i, closed + run):
            if out[p] != "\n":
                out[p] = " "
        i = closed + run
    return "".join(out)


def heading_text_to_plain(text: str) -> str:
    """Approximate the rendered text of a heading: links and images as their text, no code ticks."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"!?\[([^\]]*)\]\[[^\]]*\]", r"\1", text)
    text = re.sub(r"<[^>]+>", "", text)
    return text.replace("`", "")


def slug(text: str) -> str:
    """GitHub's anchor for a heading's text."""
    out = []
    for ch in heading_text_to_plain(text).strip().lower():
        if ch in "-_" or ch == " ":
            out.append("-" if ch == " " else ch)
            continue
        category = unicodedata.category(ch)
        if category[0] in ("L", "N") or category == "Mn":
            out.append(ch)
    return "".join(out)


_anchor_cache: dict[Path, set[str]] = {}


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, with GitHub's numbering of repeated ones."""
    if path in _anchor_cache:
        return _anchor_cache[path]
    text = mask_fences(path.read_text(encoding="utf-8"))
    lines = text.split("\n")
    found: set[str] = set()
    seen: dict[str, int] = {}

    def add(heading: str) -> None:
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")

    for i, line in enumerate(lines):
        match = ATX_HEADING.match(line)
        if match:
            add(ATX_CLOSING.sub("", match.group(2) or ""))
            continue
        if i + 1 < len(lines) and line.strip() and not line.startswith(("    ", "\t")):
            underline = SETEXT_UNDERLINE.match(lines[i + 1])
            previous_blank = i == 0 or not lines[i - 1].strip()
            if underline and previous_blank and not re.match(r"^ {0,3}([-*+]|\d+[.)])\s", line) \
                    and "|" not in line:
                add(line.strip())
    for html_id in re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", text):
        found.add(html_id)
    _anchor_cache[path] = found
    return found


def parse_destination(text: str, start: int) -> tuple[str, int] | None:
    """The destination of an inline link whose `(` ends just before `start`."""
    i = start
    n = len(text)
    while i < n and text[i] in " \t\n":
        i += 1
    if i < n and text[i] == "<":
        end = text.find(">", i + 1)
        if end < 0 or "\n" in text[i:end]:
            return None
        return text[i + 1:end], i
    depth = 0
    j = i
    while j < n:
        ch = text[j]
        if ch == "\\" and j + 1 < n:
            j += 2
            continue
        if ch in " \t\n":
            break
        if ch == "(":
            depth += 1
        elif ch == ")":
            if depth == 0:
                break
            depth -= 1
        j += 1
    return text[i:j], i


def links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every inline link, image and reference definition of a file."""
    text = mask_code(path.read_text(encoding="utf-8"))
    found: list[tuple[int, int, str]] = []
    for match in LINK_OPENING.finditer(text):
        parsed = parse_destination(text, match.end())
        if parsed is None:
            continue
        target, offset = parsed
        if target:
            found.append((offset, text.count("\n", 0, offset) + 1, target))
    for match in REFERENCE_DEFINITION.finditer(text):
        target = match.group(2)
        if target.startswith("<") and target.endswith(">"):
            target = target[1:-1]
        offset = match.start(2)
        found.append((offset, text.count("\n", 0, offset) + 1, target))
    found.sort()
    return [(line, target) for _, line, target in found]


def check(path: Path, target: str) -> str | None:
    """Why `target`, linked from `path`, is broken; None when it resolves."""
    if target.startswith(SKIPPED_PREFIXES) or target.startswith("#"):
        return None
    target_path, _, fragment = target.partition("#")
    target_path = unquote(target_path.split("?", 1)[0])
    if target_path.startswith("/"):
        resolved = (ROOT / target_path.lstrip("/")).resolve()
    else:
        resolved = (path.parent / target_path).resolve()
    try:
        resolved.relative_to(ROOT)
    except ValueError:
        return "outside the repository"
    if not resolved.exists():
        return "no such file or directory"
    if fragment and resolved.is_file() and resolved.suffix.lower() in (".md", ".markdown"):
        if unquote(fragment) not in anchors(resolved):
            return f"no heading with anchor #{fragment} in {resolved.relative_to(ROOT)}"
    return None


def main(argv: list[str]) -> int:
    if argv:
        files = [Path(arg).resolve() for arg in argv]
    else:
        files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = 0
    checked = 0
    for path in files:
        if not path.is_file():
            print(f"{path}: no such Markdown file", file=sys.stderr)
            return 2
        try:
            shown = path.relative_to(ROOT)
        except ValueError:
            shown = path
        for line, target in links(path):
            checked += 1
            reason = check(path, target)
            if reason is not None:
                broken += 1
                print(f"{shown}:{line}: {target} ({reason})")
    if broken:
        print(f"check-links: {broken} broken of {checked} links in {len(files)} files",
              file=sys.stderr)
        return 1
    print(f"check-links: {checked} links in {len(files)} Markdown files, every relative one resolves")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
