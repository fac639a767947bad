"""Superposition in Transformers (Ben Chaliah & Dellagi 2024; spec:
../shared/papers/p1_superposition.md).

data.py      domains (English, French, Python) → labelled training batches and held-out sequences
model.py     the superposed model: K frozen experts blended per layer (B-spline α), autoencoders,
             router
train.py     its trainer (make_spec / make_task: superpose.train.task): 3·MSE + masked LM loss,
             experts frozen
baselines.py what it is measured against: weight merges, output mixtures, routers, oracle routing
evaluate.py  perplexity per domain of every method; plots.py its figures
pipeline.py  the whole experiment: base, experts, superpositions per seed, then the evaluation
bench.py     superposed vs single-expert inference tokens/s
"""
