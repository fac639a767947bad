"""The superposed_experts tests' shared fixture: two tiny domains and two numpy-drawn experts saved
as our checkpoints, with the tiny config's smoke variant pointing at them."""

import gzip
import json
import pathlib

import numpy as np
import pytest
from flax import nnx

from configs.superposed_experts import tiny
from projects.superposed_experts import train
from superpose.data.lm import load_documents
from superpose.nn.testing import random_model
from superpose.train import checkpoint


def _write(path: pathlib.Path, docs) -> str:
  with gzip.open(path, "wt", encoding="utf-8") as f:
    for d in docs:
      f.write(json.dumps(d) + "\n")
  return str(path)


def _pure(tree):
  return {str(k): _pure(v) for k, v in tree.items()} if hasattr(tree, "items") else np.asarray(tree)


@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
  """The tiny config's smoke variant on two small domains (plays as written / shouted in capitals)
  and two numpy-drawn experts saved as our checkpoints."""
  root = tmp_path_factory.mktemp("superposed")
  plays = [
    {"title": d["title"], "text": d["text"][:12_000]}
    for d in load_documents("sample:shakespeare.jsonl.gz")
  ]
  domains = {
    "english": plays[:8],
    "french": [{**d, "text": d["text"].upper()} for d in plays[8:16]],
  }
  cfg = tiny.get_config("smoke").to_dict()
  model_cfg = train.superposed_config(cfg).expert
  experts = []
  for k, name in enumerate(domains):
    params = _pure(
      nnx.to_pure_dict(nnx.state(random_model(model_cfg, seed=k, scale=0.1), nnx.Param))
    )
    with checkpoint.Checkpointer(checkpoint.checkpoint_dir(root / name), async_save=False) as ckpt:
      ckpt.save(1, {"params": params}, force=True)
    experts.append((str(root / name), params))
  cfg["superposed"].update(
    experts=tuple(p for p, _ in experts),
    train_paths=tuple(_write(root / f"{n}.train.jsonl.gz", d[:-2]) for n, d in domains.items()),
    val_paths=tuple(_write(root / f"{n}.val.jsonl.gz", d[-2:]) for n, d in domains.items()),
  )
  cfg["train"].update(
    batch_size=8, checkpoint_every=0
  )  # one row per fake device; the final checkpoint only
  return cfg, [p for _, p in experts], root
