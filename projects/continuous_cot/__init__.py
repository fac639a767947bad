"""Reasoning by Superposition + Coconut: continuous thoughts on graph reachability (spec: ../shared/papers/p3_continuous_cot.md).

graphs.py        ProsQA-style DAGs: Coconut's Algorithm 1 generator, BFS answers, node-id shuffling,
                 a node-id-free graph hash, statistics
data.py          the ProsQA JSON loader, the 40-token vocabulary, the prompt layouts, generated splits (CLI)
construction.py  the paper's hand-set 2-layer construction as superpose.nn weights, and its evaluation (CLI)
thoughts.py      the model sizes (gpt2 preset from scratch) and the continuous-thought forward: KV-cached
                 (one new position per thought) and the full re-forward reference
train.py         the trainer: Coconut curriculum, CoT and No-CoT baselines on one budget
analysis.py      the superposition signature (node-group inner products, layer-2 edge attention)
bench.py         questions/s of KV-cached thoughts vs a full re-forward per thought
"""
