"""Small models with known circuits, shipped so tests and examples run offline."""
