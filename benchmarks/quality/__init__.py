"""The quality benchmark (issue 13): pruned-model quality, pruning_core vs Torch-Pruning 1.6.1.

Run it with ``make quality`` or ``python benchmarks/quality.py``; see that script's
docstring for the sections and options.
"""
