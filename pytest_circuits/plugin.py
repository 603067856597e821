"""pytest wiring for pytest-circuits (options, fixtures, markers, hooks) — grows with the plugin issue."""
