"""The base of every error that means "the input is wrong", as opposed to a bug in this package.

Each carries a message naming the culprit (prompt, component, file and line) and what to do, so
the pytest plugin shows it without the package's own frames: the user's line and the message are
all a CI reader needs.
"""


class InputError(Exception):
    """Bad input: prompts, circuits, metrics, thresholds, models or model specs that cannot be used."""


class ArgumentError(InputError, TypeError, ValueError):
    """An argument of the API that is not one of the values it takes (a ``kind``, an ``over``, a
    ``pairs`` that is not ``PromptPairs``); a ``TypeError``/``ValueError`` as well, for callers that
    caught those."""
