"""Every parameter of the ICL from-scratch trainer gets a gradient (both configs, smoke size)."""

import pytest

from configs.icl_superposition import mod_add as mod_add_cfg, retrieval as retrieval_cfg
from projects.icl_superposition import train
from superpose.train import config as config_lib, gradcheck


@pytest.mark.parametrize(
  "config_module", [retrieval_cfg, mod_add_cfg], ids=["retrieval", "mod_add"]
)
def test_icl_gradients_flow(config_module):
  cfg = config_lib.to_dict(config_module.get_config("smoke"))
  report = gradcheck.check_task(train.make_task(cfg), cfg)
  gradcheck.assert_gradients_flow(report)
  assert report.trainable > 0 and report.frozen == 0
