"""MkDocs hook: the docstrings' Sphinx roles (:func:`merge`, :class:`~mega_deap.Evaluator`) as code.

mkdocstrings renders a role as the literal text ``:func:`` before a code span; this shows the code span
alone, with a leading ``~`` (Sphinx's "last component only") applied, so docstrings stay as ``help()``
shows them and read cleanly on the site.
"""

import re

ROLE = re.compile(r":(?:func|class|meth|data|mod|attr|obj|exc):<code>(~?)([^<]*)</code>")


def _code(match: re.Match) -> str:
    tilde, target = match.groups()
    return f"<code>{target.rsplit('.', 1)[-1] if tilde else target}</code>"


def on_page_content(html: str, **kwargs) -> str:
    return ROLE.sub(_code, html)
