"""The two kinds of error a user can meet, each printed by the CLI as one sentence.

`UserError` is bad input (exit code 2); `RunError` is a failure while doing the work
(exit code 1), such as a download that cannot complete or a loss that became NaN.
"""


class UserError(ValueError):
    """The input cannot be used: a missing path, an unknown name, a value of the wrong kind."""


class RunError(RuntimeError):
    """The work could not be finished; the message says why and what to do."""
