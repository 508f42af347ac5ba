"""Training data: the built-in shapes task (shapes.py) and datasets read from disk (datasets.py)."""
