"""What training and evaluation read: the built-in shapes task (shapes.py), datasets from disk (datasets.py),
and the batches both make of them (batches.py)."""
