"""Small models with known circuits, shipped so tests and examples run offline.

Each toy module has ``load(device=None, dtype=None)`` (and ``load_hf``: the plain Hugging Face
model and tokenizer), ``CIRCUIT`` (roles -> node names),
``circuit()`` and ``prompt_pairs()``; the model spec ``toy:NAME`` loads one.
"""

NAMES = ("induction", "redundant", "nobel")
