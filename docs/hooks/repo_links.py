"""mkdocs hook: links from a docs page to a repository file that the site also shows as a page.

The Markdown pages link as they read on GitHub (``../benchmarks/RESULTS.md``, ``../CONTRIBUTING.md``);
the site shows those files through ``include-markdown`` pages (``results.md``, ``contributing.md``).
This hook points such links at the site's page before mkdocs validates them, so any other link to
a file outside docs/ still fails ``mkdocs build --strict``.
"""

import re

# a repository file outside docs/ (as linked from a page in docs/) -> the docs page that includes it
SITE_PAGES = {"../benchmarks/RESULTS.md": "results.md", "../CONTRIBUTING.md": "contributing.md"}
_LINK = re.compile(r"\]\((" + "|".join(re.escape(k) for k in SITE_PAGES) + r")(#[^)]*)?\)")


def on_page_markdown(markdown, page, config, files):
    """Rewrite ``](../X.md#a)`` to ``](page.md#a)`` for the files in SITE_PAGES (pages at docs/ top level)."""
    if "/" in page.file.src_uri:  # only top-level pages link with a single ../
        return markdown
    return _LINK.sub(lambda m: f"]({SITE_PAGES[m.group(1)]}{m.group(2) or ''})", markdown)
