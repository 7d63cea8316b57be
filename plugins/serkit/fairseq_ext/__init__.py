"""serkit's fairseq plugin: the only serkit package that registers with fairseq.

Registered (all names start with ``serkit_``):

- model ``serkit_hubert`` (:mod:`.hubert_cpt`): HuBERT continued pretraining from a pretrained
  checkpoint on a new label set, with fairseq's ``hubert_pretraining`` task and ``hubert`` criterion;
- task ``serkit_ser`` (:mod:`.ser_task`), model ``serkit_ser_model`` (:mod:`.ser_model`) and criterion
  ``serkit_ser_ce`` (:mod:`.ser_criterion`): emotion-recognition finetuning on a serkit fold.

Use it from ``fairseq-hydra-train`` with ``common.user_dir=<absolute path>/plugins/serkit_fairseq`` (a
shim that imports this package), or import it before loading a checkpoint of these models.
Python imports a module once, so importing this package again, or the shim after it, registers
nothing twice.

Importing it also makes the masks of fairseq's HuBERT and wav2vec 2.0 models reproducible
(:mod:`.masking`): fairseq 0.12 draws them from unseeded generators, so ``common.seed`` alone did not
make two pretraining runs agree.

It also lets torch's ``weights_only`` loader (the default on torch >= 2.6, which fairseq's
``load_checkpoint_to_cpu`` uses) read the checkpoints fairseq-hydra-train writes here, so a stopped
CPT or SER finetune resumes without ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``: their only non-tensor class
is ``fairseq.data.dictionary.Dictionary`` (``hubert_pretraining``'s ``task_state``), a container of
strings and ints, which is allow-listed (:data:`SAFE_GLOBALS`). Nothing else is unpickled.
"""

import torch
from fairseq.data.dictionary import Dictionary

from . import hubert_cpt, masking, ser_criterion, ser_model, ser_task  # (registration)
from .hubert_cpt import SerkitHubertConfig, SerkitHubertModel
from .ser_criterion import SerCrossEntropy
from .ser_model import SerModel, SerModelConfig
from .ser_task import SerTask, SerTaskConfig

#: classes fairseq checkpoints written by fairseq-hydra-train with serkit's configs pickle besides tensors
SAFE_GLOBALS = [Dictionary]
torch.serialization.add_safe_globals(SAFE_GLOBALS)

masking.install()

#: what this package registers with fairseq: registry -> name -> class
REGISTERED = {
    "model": {"serkit_hubert": SerkitHubertModel, "serkit_ser_model": SerModel},
    "task": {"serkit_ser": SerTask},
    "criterion": {"serkit_ser_ce": SerCrossEntropy},
}

__all__ = [
    "REGISTERED",
    "SerCrossEntropy",
    "SerModel",
    "SerModelConfig",
    "SerTask",
    "SerTaskConfig",
    "SerkitHubertConfig",
    "SerkitHubertModel",
    "hubert_cpt",
    "masking",
    "ser_criterion",
    "ser_model",
    "ser_task",
]
