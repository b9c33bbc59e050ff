"""The `featcache` command line: parse options, build a config, call one function.

One module per command group (extract, cache, train, evaluate, ablate, manifest, demo); cli/app.py holds the app, the
error convention and the option parsers they share.

Exit status: 0 success, 1 some videos failed / the cache has problems, 2 a usage error
(one line on stderr, nothing written), 130 interrupted (re-run the same command to resume).
"""
# the command modules register themselves on the apps
from featcache.cli import ablate, cache, demo, evaluate, extract, manifest, train  # noqa: E402,F401,I001
from featcache.cli.app import app, cache_app  # noqa: F401  (tests and entry points import featcache.cli.app)


def main() -> None:
    app()
