"""BAS on recipes/IEMOCAP/run.sh: the search and its baselines with BAS's training settings (SGD 0.005,
batch 32; the paper's Sec. 3.3), --bas-layers 3 reaching the search and both transformer baselines, and a
Hugging Face upstream directory (the paper's best row is WavLM-Large) accepted by --upstream.

A mini IEMOCAP passed with --root (the real-data path) and a randomly initialised tiny WavLM saved in
Hugging Face format stand in for the corpus and WavLM-Large; outputs go to --workdir.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.recipes import run_recipe

METHODS = ("bas", "bas_ffn", "bas_msa_ffn", "bas_transformer")
# What the mini corpus and the tiny WavLM give (deterministic on CPU): fold 1's selected epoch, test UA
# and WA, to the 4 decimals of a run (24 test utterances, 6 per class).
EXPECTED = {
    "bas": (1, 0.25, 0.25),
    "bas_ffn": (1, 0.25, 0.25),
    "bas_msa_ffn": (1, 0.2083, 0.2083),
    "bas_transformer": (2, 0.1667, 0.1667),
}


def run(*args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    return run_recipe("IEMOCAP", *args, timeout=timeout)


def tiny_wavlm_dir(path: Path) -> Path:
    transformers = pytest.importorskip("transformers")
    config = transformers.WavLMConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16, 16),
        conv_stride=(10, 8, 4),
        conv_kernel=(10, 8, 4),  # 320 samples a frame
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        num_buckets=16,
        max_bucket_distance=64,
    )
    import torch

    torch.manual_seed(0)
    transformers.WavLMModel(config).save_pretrained(path)
    return path


def hparams(path: Path) -> dict:
    """Top-level plain values of a run's resolved hyperparams.yaml (the tagged entries are skipped)."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^([a-z_]+): ([^!\s].*?)\s*(#.*)?$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


@pytest.mark.slow
def test_bas_and_its_baselines_on_iemocap_with_bas_settings_3_layers_and_an_hf_upstream(tmp_path):
    pytest.importorskip("speechbrain")
    from serkit.data import mini

    root = mini.build("iemocap", tmp_path / "corpus", seed=7, utts_per_class=3, extra_per_speaker=1)
    upstream = tiny_wavlm_dir(tmp_path / "wavlm-tiny")
    work = tmp_path / "work"
    res = run(
        "--root",
        str(root),
        "--upstream",
        str(upstream),
        "--workdir",
        str(work),
        "--folds",
        "1",
        "--method",
        ",".join(METHODS),
        "--bas-layers",
        "3",
        "--head-epochs",
        "2",
        "--device",
        "cpu",
    )
    assert res.returncode == 0, res.stderr[-6000:]
    exp = work / "exp" / "iemocap_loso5"

    # The features came from the Hugging Face directory.
    dumps = list((work / "dump").glob("*/all_layers/meta.json"))
    assert [json.loads(p.read_text())["upstream"] for p in dumps] == [str(upstream.resolve())]

    # BAS's settings for the search, the retrain and every baseline (not ShiftSER's AdamW 5e-4).
    search = exp / "bas_featex" / "fold1" / "search"
    runs = {"search": search, **{m: exp / f"{m}_featex" / "fold1" for m in METHODS}}
    for name, out in runs.items():
        hp = hparams(out / "hyperparams.yaml")
        assert (hp["lr"], hp["batch_size"], hp["momentum"]) == ("0.005", "32", "0.9"), name
        text = (out / "hyperparams.yaml").read_text()
        assert "opt_class: !name:torch.optim.SGD" in text and "AdamW" not in text, name
    assert hparams(search / "hyperparams.yaml")["arch_optimizer"] == "sgd"

    # --bas-layers 3: three searchable layers, a 3-block retrain and 3-layer transformer baselines.
    log = [json.loads(line) for line in (search / "search_log.jsonl").read_text().splitlines()]
    assert [len(e["probabilities"]) for e in log] == [3, 3]
    arch = (search / "arch.txt").read_text().strip()
    assert len(arch.split(",")) == 3 and hparams(runs["bas"] / "hyperparams.yaml")["arch"] == arch
    assert hparams(runs["bas_msa_ffn"] / "hyperparams.yaml")["arch"] == "msa_ffn,msa_ffn,msa_ffn"
    assert hparams(runs["bas_transformer"] / "hyperparams.yaml")["transformer_layers"] == "3"

    for m in METHODS:
        metrics = json.loads((runs[m] / "metrics.json").read_text())
        assert metrics["selection"] == "valid"
        assert (metrics["selected_epoch"], round(metrics["ua"], 4), round(metrics["wa"], 4)) == EXPECTED[m], m
        table = (exp / "RESULTS.md").read_text()
        assert f"| {m} | featex (dynamic batches) | iemocap_loso5 | wavlm-tiny |" in table


def test_bas_options_are_checked(tmp_path):
    res = run("--bas-layers", "5", "--workdir", str(tmp_path))
    assert res.returncode != 0 and "--bas-layers 5: the paper searches 3 or 4 layers" in res.stderr
    # FLEA continues fairseq pretraining: a Hugging Face directory is refused with the reason.
    hf_dir = tmp_path / "wavlm-large"
    hf_dir.mkdir()
    res = run(
        "--root",
        str(tmp_path),
        "--upstream",
        str(hf_dir),
        "--workdir",
        str(tmp_path / "w"),
        "--method",
        "flea",
        "--stage",
        "1",
    )
    assert res.returncode != 0 and "FLEA needs a fairseq HuBERT checkpoint file" in res.stderr
