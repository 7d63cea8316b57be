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
"""
import os

# torch >= 2.6 unpickles only tensors by default; fairseq checkpoints pickle configs and dictionaries.
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

from . import hubert_cpt, masking, ser_criterion, ser_model, ser_task  # noqa: E402  (registration)
from .hubert_cpt import SerkitHubertConfig, SerkitHubertModel  # noqa: E402
from .ser_criterion import SerCrossEntropy  # noqa: E402
from .ser_model import SerModel, SerModelConfig  # noqa: E402
from .ser_task import SerTask, SerTaskConfig  # noqa: E402

masking.install()

#: what this package registers with fairseq: registry -> name -> class
REGISTERED = {
    "model": {"serkit_hubert": SerkitHubertModel, "serkit_ser_model": SerModel},
    "task": {"serkit_ser": SerTask},
    "criterion": {"serkit_ser_ce": SerCrossEntropy},
}

__all__ = ["REGISTERED", "SerCrossEntropy", "SerModel", "SerModelConfig", "SerTask", "SerTaskConfig",
           "SerkitHubertConfig", "SerkitHubertModel", "hubert_cpt", "masking", "ser_criterion", "ser_model",
           "ser_task"]
