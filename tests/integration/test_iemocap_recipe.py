"""recipes/IEMOCAP/run.sh, stages 0-5, on a corpus in IEMOCAP's layout that no other test uses.

The corpus is a mini IEMOCAP with its own seed (other speakers, sentences and voices than the demo's),
passed with --root like a real corpus, so the recipe takes the real-data path: the user's upstream
(a tiny HuBERT checkpoint here), the paper's configs with schedules shortened by options. Outputs go
to --workdir, so the repository's own recipe outputs are untouched.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.recipes import run_recipe

pytest.importorskip("fairseq", reason="fairseq not installed (pip install 'serkit[fairseq]')")
pytest.importorskip("speechbrain")

pytestmark = [pytest.mark.slow, pytest.mark.fairseq]

#: the CPU-sized MFSN overlay, as the recipe (cwd recipes/IEMOCAP) names it
MFSN_MINI = "../../plugins/serkit/conf/mfsn_mini.yaml"
SHORT = [
    "--folds",
    "1",
    "--layer",
    "2",
    "--nclusters",
    "8",
    "--teacher-epochs",
    "2",
    "--finetune-epochs",
    "2",
    "--head-epochs",
    "2",
    "--finetune-lr",
    "0.001",
    "--cpt-updates",
    "4",
    "--cpt-config",
    "../../plugins/serkit/conf/fairseq/cpt_hubert_tiny.yaml",
    "--head-overrides",
    "--channel_mask_width 5",
    "--device",
    "cpu",
]


def run(*args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    return run_recipe("IEMOCAP", *args, timeout=timeout)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_hubert):
    from serkit.data import mini

    base = tmp_path_factory.mktemp("iemocap_recipe")
    root = mini.build("iemocap", base / "corpus", seed=5, utts_per_class=3, extra_per_speaker=1)
    ckpt = tiny_hubert
    work = base / "work"
    args = [
        "--root",
        str(root),
        "--upstream",
        str(ckpt),
        "--workdir",
        str(work),
        *SHORT,
        "--method",
        "flea,shiftcnn",
    ]
    first = run(*args)
    assert first.returncode == 0, first.stderr[-6000:]
    return {
        "root": root,
        "work": work,
        "exp": work / "exp" / "iemocap_loso5",
        "args": args,
        "log": first.stderr,
    }


def test_stages_0_to_5_write_folds_labels_checkpoints_and_results(setup):
    exp, work = setup["exp"], setup["work"]
    fold = work / "data" / "iemocap" / "iemocap_loso5" / "fold1"
    n = {s: len((fold / f"{s}.tsv").read_text().splitlines()) - 1 for s in ("train", "valid", "test")}
    assert n["test"] == 24 and n["train"] + n["valid"] == 96  # session 1 held out; 3 per class per speaker
    km = exp / "km" / "fold1"
    for s in ("train", "valid", "test"):
        lines = (km / f"{s}.km").read_text().splitlines()
        assert len(lines) == n[s]
    meta = json.loads((km / "km.json").read_text())
    assert meta["transductive"] is False and meta["fit"]["splits"] == ["train"]
    assert (exp / "cpt" / "fold1" / "checkpoint_last.pt").is_file()
    assert (exp / "teacher" / "fold1" / "upstream.pt").is_file()
    # what this corpus gives (deterministic on CPU): selected epoch, test UA and WA, to 4 decimals
    expected = {
        "teacher": (2, 0.25, 0.25),
        "flea_attention": (1, 0.25, 0.25),
        "flea_mean": (2, 0.25, 0.25),
        "shiftcnn_featex": (1, 0.2917, 0.2917),
    }
    for run_name in ("teacher", "flea_attention", "flea_mean", "shiftcnn_featex"):
        m = json.loads((exp / run_name / "fold1" / "metrics.json").read_text())
        assert m["selection"] == "valid"
        assert (m["selected_epoch"], round(m["ua"], 4), round(m["wa"], 4)) == expected[run_name], run_name
        rows = (exp / run_name / "fold1" / "predictions" / "test.epoch002.tsv").read_text().splitlines()
        assert len(rows) == n["test"] + 1
    table = (exp / "RESULTS.md").read_text()
    for name in ("teacher", "FLEA (attention pooling)", "FLEA (mean pooling)", "shiftcnn"):
        assert f"| {name}" in table, table
    assert "Stage 5" in setup["log"] and "Where the time went" in setup["log"]


@pytest.fixture(scope="module")
def again(setup):
    """The same run a second time, before any test changes the workdir's options (stage 3's test)."""
    return run(*setup["args"])


def test_rerun_skips_every_finished_stage(again):
    assert again.returncode == 0, again.stderr[-4000:]
    assert "Stage 1: teacher" in again.stderr
    assert "Going into epoch" not in again.stderr and not re.search(r"epoch: \d+", again.stderr)
    assert again.stderr.count("skip:") >= 8  # data, folds, teacher, layer dump, km, cpt, 2 x flea, dump, head


def test_stage_3_reenters_at_continued_pretraining_with_earlier_outputs(setup, again):
    # `again` first: this test leaves continued pretraining with other options than setup["args"]
    exp = setup["exp"]
    km_before = {p.name: p.stat().st_mtime_ns for p in (exp / "km" / "fold1").iterdir()}
    teacher_before = (exp / "teacher" / "fold1" / "upstream.pt").stat().st_mtime_ns
    args = [a for a in setup["args"]]
    args[args.index("--cpt-updates") + 1] = "6"
    res = run(*args, "--stage", "3", "--stop-stage", "3")
    assert res.returncode == 0, res.stderr[-4000:]
    assert "options changed" in res.stderr and "Stage 1" not in res.stderr and "Stage 4" not in res.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (exp / "km" / "fold1").iterdir()} == km_before
    assert (exp / "teacher" / "fold1" / "upstream.pt").stat().st_mtime_ns == teacher_before
    log = (exp / "cpt" / "fold1" / "train.log").read_text()
    assert "num_updates 6" in log
    assert list((exp / "cpt").glob("fold1.prev-*"))  # the 4-update run was moved aside, not resumed


def test_bad_options_fail_with_a_message(tmp_path):
    res = run("--protocol", "meld_official", "--workdir", str(tmp_path))
    assert res.returncode != 0
    assert "--protocol meld_official: choose one of: iemocap_loso5 iemocap_loso10" in res.stderr
    res = run("--no-such-option", "1")
    assert res.returncode != 0 and "unknown option --no-such-option" in res.stderr
    res = run("--root", str(tmp_path / "missing"), "--workdir", str(tmp_path))
    assert res.returncode != 0 and "no such directory" in res.stderr


@pytest.mark.parametrize("protocol", ["iemocap_loso5", "iemocap_loso10"])
def test_mfsn_runs_on_both_protocols(setup, protocol):
    ckpt = setup["args"][setup["args"].index("--upstream") + 1]
    args = [a for a in setup["args"]]
    args[args.index("--method") + 1] = "mfsn"
    res = run(
        *args,
        "--protocol",
        protocol,
        "--tec-upstream",
        ckpt,
        "--sec-upstream",
        ckpt,
        "--tec-layer",
        "2",
        "--sec-layers",
        "0,1,2",
        "--mfsn-overlay",
        MFSN_MINI,
        "--head-overrides",
        "",
    )
    assert res.returncode == 0, res.stderr[-4000:]
    fold = setup["work"] / "exp" / protocol / "mfsn_mfsn" / "fold1"
    m = json.loads((fold / "metrics.json").read_text())
    assert m["selection"] == "valid"
    # what this corpus gives (deterministic on CPU): selected epoch, test UA and WA, to 4 decimals
    expected = {"iemocap_loso5": (1, 0.25, 0.25), "iemocap_loso10": (7, 0.8333, 0.8333)}
    assert (m["selected_epoch"], round(m["ua"], 4), round(m["wa"], 4)) == expected[protocol]
    assert (fold.parents[1] / "mfsn_mfsn_search" / "fold1" / "arch.txt").is_file()  # the search call's
    assert json.loads((fold / "train_info.json").read_text())["arch"]  # the retrain call's cell
    table = (setup["work"] / "exp" / protocol / "RESULTS.md").read_text()
    assert f"| MFSN (mfsn) | featex (dynamic batches) | {protocol} |" in table


def test_tapt_continues_pretraining_on_given_labels_before_the_teacher(setup, tmp_path):
    exp = setup["exp"]
    args = [a for a in setup["args"]]
    args[args.index("--method") + 1] = "flea"
    tapt = exp.parent / "tapt"
    # TAPT on labels laid out as stage 2 writes them: here the first run's own k-means labels
    res = run(*args, "--tag", "tapt", "--tapt-labels", str(exp / "km"), "--stop-stage", "1")
    assert res.returncode == 0, res.stderr[-4000:]
    ckpt = tapt / "tapt" / "fold1" / "checkpoint_last.pt"
    assert ckpt.is_file() and "num_updates 4" in (tapt / "tapt" / "fold1" / "train.log").read_text()
    info = json.loads((tapt / "teacher" / "fold1" / "train_info.json").read_text())
    assert info["upstream"] == str(ckpt.resolve())  # the teacher starts from the TAPT model
    assert "TAPT" in json.loads((tapt / "teacher" / "run.json").read_text())["method"]
    assert (tapt / "teacher" / "fold1" / "layer2").is_dir()

    bad = tmp_path / "labels"
    bad.mkdir()
    for name in ("train.km", "valid.km"):
        (bad / name).write_text("1 2 3\n")
    (bad / "dict.km.txt").write_text("1 1\n2 1\n3 1\n")
    res = run(*args, "--tag", "tapt_bad", "--tapt-labels", str(bad), "--stop-stage", "1")
    assert res.returncode != 0 and "row-aligned with fold 1's manifests" in res.stderr


def _tiny_ctc_checkpoint(out: Path) -> tuple[Path, Path]:
    """A 2-layer CTC wav2vec 2.0 in fairseq's finetuned layout (random weights) and its dict.ltr.txt.

    It stands for wav2vec_small_960h.pt on the recipe's ASR path: its greedy transcripts are letter soup,
    which is all the path needs (dump, greedy CTC, sentencepiece on the training split, training).
    """
    import torch
    from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model
    from omegaconf import OmegaConf

    torch.manual_seed(0)
    cfg = Wav2Vec2Config(
        conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2",
        encoder_layers=2,
        encoder_embed_dim=64,
        encoder_ffn_embed_dim=128,
        encoder_attention_heads=2,
        final_dim=32,
        latent_vars=8,
        latent_groups=2,
    )
    model_cfg = OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)
    model_cfg["_name"] = "wav2vec2"
    letters = ["|", *"ETAONIHSRDLUMWCFGYPBVK'XJQZ"]
    sd = {f"w2v_encoder.w2v_model.{k}": v for k, v in Wav2Vec2Model(cfg).state_dict().items()}
    sd["w2v_encoder.proj.weight"] = torch.randn(4 + len(letters), 64)
    sd["w2v_encoder.proj.bias"] = torch.zeros(4 + len(letters))
    task = {"_name": "audio_pretraining", "data": "/nowhere", "normalize": False, "sample_rate": 16000}
    ckpt = out / "wav2vec_tiny_ctc.pt"
    torch.save(
        {
            "cfg": {
                "model": {
                    "_name": "wav2vec_ctc",
                    "w2v_path": "/nowhere.pt",
                    "w2v_args": {"model": model_cfg, "task": task},
                },
                "task": {**task, "_name": "audio_finetuning", "labels": "ltr"},
            },
            "model": sd,
            "optimizer_history": [
                {
                    "criterion_name": "ctc",
                    "optimizer_name": "adam",
                    "lr_scheduler_state": {},
                    "num_updates": 0,
                }
            ],
        },
        ckpt,
    )
    letters_dict = out / "dict.ltr.txt"
    letters_dict.write_text("".join(f"{c} {1000 - i}\n" for i, c in enumerate(letters)))
    return ckpt, letters_dict


def test_mfsn_text_ablation_from_transcripts_and_asr_sits_beside_audio(setup, tmp_path):
    ckpt = setup["args"][setup["args"].index("--upstream") + 1]
    args = [a for a in setup["args"]]
    args[args.index("--method") + 1] = "mfsn"
    # the CPU-sized configs: this corpus is passed as --root (the real-data path), whose defaults are
    # the full mfsn.yaml and conf/mfsn_text.yaml: the mini overlays on them
    args += ["--sec-upstream", ckpt, "--tec-layer", "2", "--sec-layers", "0,1,2", "--head-overrides", ""]
    text_conf = ["--mfsn-overlay", f"{MFSN_MINI},conf/mfsn_text_mini.yaml"]
    exp = setup["exp"]
    # done already when the protocol test ran first
    audio = run(*args, "--tec-upstream", ckpt, "--mfsn-overlay", MFSN_MINI)
    assert audio.returncode == 0, audio.stderr[-4000:]

    # one fold each: every fold is two serkit train calls (search, retrain)
    text = run(*args, *text_conf, "--mfsn-tec", "text", "--folds", "1")
    assert text.returncode == 0, text.stderr[-4000:]
    fold = exp / "mfsn_text_mfsn" / "fold1"
    info = json.loads((fold / "train_info.json").read_text())
    assert "TEXT LEAK" in info["note"] and info["sources"]["tec"]["text"].startswith("transcript ")
    train_utts = [
        Path(line.split("\t")[0]).stem
        for line in (setup["work"] / "data/iemocap/iemocap_loso5/fold1/train.tsv")
        .read_text()
        .splitlines()[1:]
    ]
    transcribed = [line.split()[0] for line in (fold / "transcripts.train.txt").read_text().splitlines()]
    assert transcribed == train_utts  # the tokenizer saw the training split, nothing else
    rows = [line for line in text.stdout.splitlines() if line.startswith("| MFSN")]
    assert len(rows) == 2 and "TEC from the transcripts" in rows[0], text.stdout
    assert rows[1].startswith("| MFSN (mfsn) |")  # the audio TEC run, for the gap

    no_dict = run(*args, *text_conf, "--mfsn-tec", "asr", "--tec-upstream", ckpt)
    assert no_dict.returncode != 0 and "--ctc-dict" in no_dict.stderr
    ctc, letters = _tiny_ctc_checkpoint(tmp_path)
    asr = run(
        *args,
        *text_conf,
        "--mfsn-tec",
        "asr",
        "--tec-upstream",
        str(ctc),
        "--ctc-dict",
        str(letters),
        "--folds",
        "1",
    )
    assert asr.returncode == 0, asr.stderr[-4000:]
    info = json.loads((exp / "mfsn_asr_mfsn" / "fold1" / "train_info.json").read_text())
    assert info["sources"]["tec"]["text"] == "greedy CTC of wav2vec_tiny_ctc.pt (layer 2)"
    transcripts = (exp / "mfsn_asr_mfsn" / "fold1" / "transcripts.train.txt").read_text().splitlines()
    assert len(transcripts) == len(train_utts) and any(len(t.split()) > 1 for t in transcripts)
    assert len([line for line in asr.stdout.splitlines() if line.startswith("| MFSN")]) == 3


def test_mfsn_asr_tec_is_refused_on_the_mini_corpus(tmp_path):
    res = run("--method", "mfsn", "--mfsn-tec", "asr", "--workdir", str(tmp_path), "--stage", "4")
    assert res.returncode != 0 and "the mini corpus has no ASR model" in res.stderr
