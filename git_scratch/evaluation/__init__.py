"""Evaluation: caption and VQA metrics, `git-scratch eval` over a dataset, and the demo model's demo."""
