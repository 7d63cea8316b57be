"""The fairseq plugin in a fresh interpreter: importing serkit.fairseq_ext and fairseq's --user-dir in either
order, twice, registers each serkit component once."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("fairseq", reason="fairseq not installed (pip install 'serkit[fairseq]')")

from tests.fixtures.fairseq_train import REPO, USER_DIR  # noqa: E402

pytestmark = pytest.mark.fairseq


@pytest.mark.parametrize("first", ["serkit.fairseq_ext", "user_dir"])
def test_fresh_interpreter_either_import_order(first):
    code = f"""
import importlib, sys
from argparse import Namespace
from fairseq import utils
from fairseq.models import MODEL_REGISTRY
from fairseq.tasks import TASK_REGISTRY
steps = ["serkit.fairseq_ext", "user_dir"]
if {first!r} == "user_dir":
    steps.reverse()
for step in steps + steps:
    if step == "user_dir":
        utils.import_user_module(Namespace(user_dir={str(USER_DIR)!r}))
    else:
        importlib.import_module(step)
import serkit.fairseq_ext as ext
assert MODEL_REGISTRY["serkit_hubert"] is ext.SerkitHubertModel
assert TASK_REGISTRY["serkit_ser"] is ext.SerTask
print("OK")
"""
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    env["OMP_NUM_THREADS"] = "1"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]
