"""The one exception type that means "the user gave us something wrong".

The CLI turns a FeatcacheError into a single line on stderr and exit status 2; anything else
is a bug and keeps its traceback.
"""


class FeatcacheError(Exception):
    """A user-facing error: the message says what is wrong and what to do."""


class OptionError(FeatcacheError, ValueError):
    """A bad value of one option. The library names the option by its config key (``batch_size:
    expected ...``); the CLI shows the same message under its flag (``--batch-size: expected ...``)."""

    def __init__(self, option: str, message: str):
        self.option, self.message = option, message
        super().__init__(f"{option}: {message}")

    @property
    def flag(self) -> str:
        return "--" + self.option.replace("_", "-")


class DamagedStore(FeatcacheError, OSError):
    """A store's files are missing or truncated where its index says data lies."""
