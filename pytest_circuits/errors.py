"""The base of every error that means "the input is wrong", as opposed to a bug in this package.

Each carries a message naming the culprit (prompt, component, file and line) and what to do, so
the pytest plugin shows it without the package's own frames: the user's line and the message are
all a CI reader needs.
"""


class InputError(Exception):
    """Bad input: prompts, circuits, metrics, thresholds, models or model specs that cannot be used."""
