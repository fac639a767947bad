"""Everything Everywhere All at Once: in-context learning of tasks in superposition (spec:
../shared/papers/p4_icl.md).

tasks.py   the task families as seeded generators: character retrieval (8 tasks) and ``x>(x+k) mod
           10`` (10 tasks) for the from-scratch models; the paper's four LLM families (addition as
           numerals / English / French / Spanish words, copy-or-add ``A@B=``, country → capital /
           continent / upper case, word → first / last letter in lower / upper case); the
           ``FAMILIES``/``TASKS`` registries; single-task, two-task mixed (exact fraction d) and
           K-task prompts
tables.py  the lookup tables (number words, country tables) read from a configurable folder (default
           ../shared/data/icl_tables), and the local word list that replaces the ``random-word``
           package
chars.py   one token per character for the from-scratch models: the 96-character vocabulary (a
           superpose.data.symbols vocabulary with sep '', registered as ``"icl_chars"``) and
           answer-only loss masks
train.py   the from-scratch trainer (spec §2): one task per row, answer-only loss, uniform or skewed
           task draws; make_spec / make_task (``configs/icl_superposition/retrieval.py``)
scoring.py teacher-forced answer probabilities from a KV-cached prefill for any superpose.nn model,
           top-K complete outputs (r), residual patching at the last prompt token, hidden states
calibrate.py  mixed-prompt calibration curves of trained runs beside the reference curves (spec
              §2.4)
cli.py     what the analysis commands share: one-line errors (exit 2), results as JSON + Markdown
task_vectors.py  task vectors: extraction, best patch layer, convex combinations vs real mixed
                 prompts
llm_eval.py   the LLM families on any model (HF GPT-2 directory or a run of this repo): P per task,
           elsewhere, KL, r
"""
