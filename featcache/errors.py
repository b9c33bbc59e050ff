"""The one exception type that means "the user gave us something wrong".

The CLI turns a FeatcacheError into a single line on stderr and exit status 2; anything else
is a bug and keeps its traceback.
"""


class FeatcacheError(Exception):
    """A user-facing error: the message says what is wrong and what to do."""


class DamagedStore(FeatcacheError, OSError):
    """A store's files are missing or truncated where its index says data lies."""
