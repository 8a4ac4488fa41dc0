"""A griffe extension for the API reference: the package's Sphinx markup, rendered by mkdocstrings.

The docstrings follow the Google style with reStructuredText markup inside (``:class:`Flow```,
``:math:`\\log p```, ``.. math::`` blocks, ``Example::`` literal blocks), which Markdown would
print as is. Before mkdocstrings parses a docstring this rewrites, in the text only:

- ``:math:`x``` into ``\\(x\\)`` and a ``.. math::`` block into a ``$$`` block (pymdownx.arithmatex,
  typeset by MathJax);
- ``:class:``, ``:func:``, ``:meth:``, ``:attr:``, ``:mod:``, ``:data:``, ``:exc:`` and ``:obj:``
  into cross-references. A name is resolved the way Python would see it from the documented
  object (its members, inherited ones included, its module's names and imports), so
  ``:class:`Flow``` and ``:class:`~unflow_zoo.core.flow.Flow``` both work. A name of the
  package links to its entry when the site documents it and is plain code otherwise; a name
  that does not exist stays a plain Markdown cross-reference, which mkdocs-autorefs reports,
  so ``mkdocs build --strict`` fails on a typo or a renamed object. Builtins, other
  libraries' names and attributes griffe cannot see (``register_buffer``) are plain code;
- a paragraph ending in ``::`` before an indented block into one ending in ``:`` (the block is
  already a Markdown code block).

Nothing in the package is imported or changed: griffe reads the source, and this edits its copy.
"""

from __future__ import annotations

import builtins
import html
import re
from typing import Any

import griffe

PACKAGE = "unflow_zoo"

_ROLE = re.compile(r":(?P<role>class|func|meth|attr|mod|data|exc|obj):`(?P<tilde>~?)(?P<target>[^`<>]+?)`")
_MATH_ROLE = re.compile(r":math:`(?P<tex>[^`]+)`")
_MATH_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<first>.*)$")
_LITERAL_INTRO = re.compile(r"(?P<text>\S.*?)(?P<space>[ \t]*)::[ \t]*$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _math_blocks(text: str) -> str:
    """``.. math:: ...`` (content on the directive line, the indented lines below, or both) -> ``$$`` block."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        m = _MATH_DIRECTIVE.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        indent = m["indent"]
        body: list[str] = [m["first"]] if m["first"].strip() else []
        i += 1
        block: list[str] = []
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > len(indent)):
            block.append(lines[i])
            i += 1
        while block and not block[-1].strip():  # trailing blank lines belong to what follows
            block.pop()
            i -= 1
        nonblank = [b for b in block if b.strip()]
        cut = min((_indent(b) for b in nonblank), default=0)
        body += [b[cut:] if b.strip() else "" for b in block]
        while body and not body[0].strip():
            body.pop(0)
        if out and out[-1].strip():
            out.append("")
        out += [indent + "$$", *(indent + b if b else "" for b in body), indent + "$$"]
        if i < len(lines) and lines[i].strip():
            out.append("")
    return "\n".join(out)


def _literal_intros(text: str) -> str:
    """``Example::`` / ``text ::`` before a blank line and an indented block -> ``Example:`` / ``text``."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        m = _LITERAL_INTRO.fullmatch(line.strip()) if "::" in line and ".. math::" not in line else None
        if not m:
            continue
        nxt = next((ln for ln in lines[i + 1 :] if ln.strip()), None)
        if nxt is None or _indent(nxt) <= _indent(line):
            continue
        lead = line[: _indent(line)]
        lines[i] = lead + m["text"] + ("" if m["space"] else ":")
    return "\n".join(lines)


def _lookup(path: str, collection: Any) -> bool:
    try:
        collection[path]
    except Exception:  # noqa: BLE001  (KeyError, alias resolution errors: all mean "not there")
        return False
    return True


def _resolve_first(obj: griffe.Object, name: str) -> str | None:
    """The full path of ``name`` seen from ``obj``: members (inherited ones too), then outer scopes."""
    scope: Any = obj
    while scope is not None:
        if scope.is_class:
            try:
                members = scope.all_members
            except Exception:  # noqa: BLE001  (unresolvable bases)
                members = scope.members
        else:
            members = scope.members
        if name in members:
            member = members[name]
            return member.target_path if member.is_alias else member.path
        if scope.name == name and scope.parent is not None and not scope.is_module:
            return scope.path
        scope = scope.parent
    try:
        return obj.resolve(name)
    except Exception:  # noqa: BLE001
        return None


def _crossref(obj: griffe.Object, match: re.Match[str]) -> str:
    target = match["target"].strip()
    call = target.endswith("()")
    name = target[:-2] if call else target
    name = name.lstrip(".")
    shown = name.rsplit(".", 1)[-1] if match["tilde"] else name
    title = f"`{shown}{'()' if call else ''}`"
    first, _, rest = name.partition(".")
    if first == PACKAGE:
        path: str | None = name
    else:
        path = _resolve_first(obj, first)
        if path is not None and rest:
            path = f"{path}.{rest}"
    if path is None:
        if "." in name or hasattr(builtins, name) or match["role"] == "attr":
            # another library's name, a builtin, or an attribute griffe cannot see (a buffer
            # registered with register_buffer, a Lightning hyper-parameter)
            return title
        return f"[{title}][{name}]"  # unknown: autorefs reports it where the docstring is rendered
    if not path.startswith(PACKAGE + "."):
        return title
    if not _lookup(path, obj.modules_collection):
        return f"[{title}][{path}]"  # no such object in the package: reported likewise
    return f'<autoref identifier="{html.escape(path)}" optional><code>{html.escape(shown)}{"()" if call else ""}</code></autoref>'


def convert(obj: griffe.Object, text: str) -> str:
    """The docstring ``text`` of ``obj`` with its reStructuredText markup rewritten to Markdown."""
    text = _math_blocks(text)
    text = _literal_intros(text)
    text = _MATH_ROLE.sub(lambda m: f"\\({m['tex']}\\)", text)
    return _ROLE.sub(lambda m: _crossref(obj, m), text)


class RstMarkup(griffe.Extension):
    """Rewrite every docstring of the package once it is loaded (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._done: set[int] = set()

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        if pkg.name != PACKAGE or id(pkg) in self._done:
            return
        self._done.add(id(pkg))
        seen: set[int] = set()
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if obj.docstring is not None:
                obj.docstring.value = convert(obj, obj.docstring.value)
            stack.extend(m for m in obj.members.values() if not m.is_alias)

    on_package_loaded = on_package  # the older name of this hook, for older griffe releases
