"""Griffe extension of the API reference (mkdocs.yml, mkdocstrings' python handler): the docstrings are written with
Sphinx roles (:func:`solve`, :class:`~ei_toolkit.LinearSDE`), which Markdown does not know. Each becomes inline code
that links to the object's API entry when the site renders one (an optional cross-reference: a name the site does not
render, private or in another package, stays plain code instead of failing the strict build).
"""

from __future__ import annotations

import html
import re

import griffe

CODE = re.compile(r"(`+)(?:.+?)\1", flags=re.S)
ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|data|mod|exc|obj|const|any):`(~?)([\w.]+)(?:\(\))?`")


def identifier(obj: griffe.Object, target: str) -> str:
    """The full path of ``target`` as written in ``obj``'s docstring (relative names resolved in obj's scope)."""
    head, _, rest = target.partition(".")
    for scope in (obj, obj.parent):
        if scope is None:
            continue
        try:
            return scope.resolve(head) + (f".{rest}" if rest else "")
        except Exception:  # griffe raises several kinds; an unresolved name stays as written
            continue
    return target


class SphinxRoles(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        seen: set[int] = set()

        def visit(obj: griffe.Object) -> None:
            if id(obj) in seen or obj.is_alias:
                return
            seen.add(id(obj))
            if obj.docstring is not None:
                obj.docstring.value = ROLE.sub(lambda m: self.link(obj, m), self.indexing(obj.docstring.value))
            for member in obj.members.values():
                if not member.is_alias:
                    visit(member)

        visit(pkg)

    @staticmethod
    def indexing(text: str) -> str:
        """``weights[i][j]`` written as plain text is indexing, not a Markdown reference link: ``][`` -> ``]\\[``
        outside code spans."""
        out, last = [], 0
        for m in CODE.finditer(text):
            out += [text[last:m.start()].replace("][", "]\\["), m.group(0)]
            last = m.end()
        return "".join([*out, text[last:].replace("][", "]\\[")])

    @staticmethod
    def link(obj: griffe.Object, m: re.Match) -> str:
        target = m.group(2)
        title = target.rsplit(".", 1)[-1] if m.group(1) else target
        ident = identifier(obj, target)
        return f'<autoref identifier="{html.escape(ident)}" optional><code>{html.escape(title)}</code></autoref>'
