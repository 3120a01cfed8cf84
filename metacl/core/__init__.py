"""The low shared layer: batches of token ids, probe scoring, continual-learning metrics.

Why a layer of its own: models, meta-learners, strategies, the runner and the benchmarks all
pad token ids the same way and score probes with the same LAMA-ckl metric; keeping those pieces
here (importing only `metacl.errors`) lets every higher package use them without importing each
other. See docs/architecture.md for the layer list.
"""
