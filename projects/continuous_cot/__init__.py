"""Reasoning by Superposition + Coconut: continuous thoughts on graph reachability (spec:
../shared/papers/p3_continuous_cot.md).

graphs.py        ProsQA-style DAGs: Coconut's Algorithm 1 generator, BFS answers, node-id shuffling,
                 a node-id-free graph hash, statistics
data.py          the ProsQA JSON loader, the 40-token vocabulary, the prompt layouts, generated
                 splits (CLI)
construction.py  the paper's hand-set 2-layer construction as superpose.nn weights, and its
                 evaluation (CLI)
thoughts.py      the model sizes (gpt2 preset from scratch) and the continuous-thought forward:
                 KV-cached (one new position per thought, per-row thought counts), the full
                 re-forward reference, and the compact training forward (logits only where a loss
                 can be; the last layer only there)
rows.py          the training rows in plain Python: Coconut stage and row, label pools, CoT / No-CoT
                 rows, the stage schedule, per-row node relabelling, label-pool masks, padding and
                 targets
train.py         the trainer: Coconut curriculum (separate stage-0 length, optimizer reset per
                 stage, per-row node relabelling, label or set-valued loss), CoT and No-CoT
                 baselines on one budget; length-bucketed batches (a pure function of (seed, step))
                 or the padded reference
metrics.py       answer metrics (full-vocabulary, two-candidate, answer-is-a-candidate), hop-k
                 accuracy of thoughts, the floors (first candidate, more ancestors), Wilson
                 intervals, Markdown tables
curves.py        learning curves of runs (plot + table with Wilson intervals, rows/tokens seen, wall
                 time)
analysis.py      the superposition signature (node-group inner products, layer-2 edge attention)
evaluate.py      released-split metrics of trained runs with Wilson intervals
bench.py         questions/s of KV-cached thoughts vs a full re-forward per thought; ``--train``:
                 real tokens/s of the train step, the previous padded path vs the bucketed compact
                 one (ABBA)
"""
