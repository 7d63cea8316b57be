"""The MFSN trainer on a synthetic fold: search -> derive -> retrain writes what `serkit score` reads."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from serkit.data.manifest import Utterance, write_dict, write_split
from serkit.nn.mfsn import FUSION_OPS
from serkit.speechbrain import mfsn as trainer
from serkit.utils import SerkitError

CLASSES = ["ang", "hap", "sad"]
DIM = 8
LAYERS = [0, 1, 2]
REPO = Path(__file__).resolve().parents[2]


def _write_feats(path, utts, frames):
    import kaldiio

    path.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with kaldiio.WriteHelper(f"ark,scp:{path}/feats.ark,{path}/feats.scp") as w:
        for u in utts:
            w(u, rng.standard_normal((frames[u], len(LAYERS) * DIM)).astype(np.float32))
    (path / "utt2num_frames").write_text("".join(f"{u} {frames[u]}\n" for u in utts))
    (path / "meta.json").write_text(json.dumps({
        "upstream": "synthetic.pt", "kind": "hubert", "layers": LAYERS, "dim": DIM, "dtype": "float32",
        "frame_rate": 50, "normalize": False}))


@pytest.fixture(scope="module")
def fold(tmp_path_factory):
    root = tmp_path_factory.mktemp("mfsn_fold")
    rng = np.random.default_rng(0)
    splits = {"train": [], "valid": [], "test": []}
    frames = {}
    for spk, split in (("s1", "train"), ("s2", "train"), ("s3", "valid"), ("s4", "test")):
        for c in CLASSES:
            for i in range(2):
                utt = f"{spk}_{c}{i}"
                # One clip longer than 3 s, so that an utterance has two segments (the last right-aligned).
                n = 56000 if (spk, c, i) == ("s4", "ang", 0) else int(rng.integers(12000, 30000))
                wav = root / "wavs" / f"{utt}.wav"
                wav.parent.mkdir(exist_ok=True)
                sf.write(wav, (0.1 * rng.standard_normal(n)).astype(np.float32), 16000)
                splits[split].append(Utterance(utt, str(wav), n, c, spk))
                frames[utt] = (n - 400) // 320 + 1
    fold_dir = root / "fold1"
    for split, utts in splits.items():
        write_split(fold_dir, split, utts, root=str(root / "wavs"))
    write_dict(fold_dir, CLASSES, {c: 4 for c in CLASSES})
    (fold_dir / "fold.json").write_text(json.dumps({"protocol": "synthetic", "fold": 1, "corpus": "toy"}))
    _write_feats(root / "feats", list(frames), frames)
    return root, splits


def _args(root, out, ablation, *extra):
    conf = "recipes/SAVEE/conf/mfsn_mini.yaml"
    return [conf, "--fold-dir", str(root / "fold1"), "--output-folder", str(out),
            "--tec-feats", str(root / "feats"), "--sec-feats", str(root / "feats"), "--ablation", ablation,
            "--search_epochs", "1", "--number_of_epochs", "2", "--batch_size", "4", *extra]


@pytest.mark.slow
def test_mfsn_search_derive_retrain_writes_predictions_and_arch(fold, monkeypatch):
    root, splits = fold
    monkeypatch.chdir(REPO)
    out = root / "exp" / "mfsn" / "fold1"
    assert trainer.main(_args(root, out, "mfsn")) == 0
    for split in ("valid", "test"):
        for epoch in (1, 2):
            lines = (out / "predictions" / f"{split}.epoch{epoch:03d}.tsv").read_text().splitlines()
            assert lines[0].split("\t") == ["utt", "label", "pred", *CLASSES]
            assert [r.split("\t")[0] for r in lines[1:]] == [u.utt for u in splits[split]]
            for r in lines[1:]:
                cols = r.split("\t")
                probs = [float(x) for x in cols[3:]]
                assert math.isclose(sum(probs), 1.0, abs_tol=1e-4)
                assert cols[2] == CLASSES[int(np.argmax(probs))]
    assert not (out / "predictions" / "valid.epoch003.tsv").exists()
    arch = json.loads((out / "arch.json").read_text())
    assert arch["fusion_ops"][0] in FUSION_OPS and arch["sec_level"] in (0, 1, 2)
    assert "fusion_ops:" in (out / "arch.txt").read_text()
    assert len((out / "search" / "log.jsonl").read_text().splitlines()) == 1
    info = json.loads((out / "train_info.json").read_text())
    assert info["finished"] and info["method"] == "MFSN" and info["setting"] == "mfsn"
    assert info["selection"] == "valid" and info["classes"] == CLASSES and info["protocol"] == "synthetic"
    assert info["sources"]["tec"]["detached"] is True and info["sources"]["sec"]["layers"] == LAYERS
    # Same config again: nothing is redone.
    stamp = (out / "predictions" / "test.epoch002.tsv").stat().st_mtime_ns
    assert trainer.main(_args(root, out, "mfsn")) == 0
    assert (out / "predictions" / "test.epoch002.tsv").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_sec_only_needs_no_tec_and_bad_layer_is_named(fold, monkeypatch, capsys):
    root, _ = fold
    monkeypatch.chdir(REPO)
    out = root / "exp" / "sec_only" / "fold1"
    args = _args(root, out, "sec_only", "--emotion_head", "meanpool")
    args[args.index("--tec-feats") + 1] = str(root / "does-not-exist")
    assert trainer.main(args) == 0
    assert (out / "predictions" / "test.epoch002.tsv").is_file()
    assert not (out / "arch.txt").exists()
    assert "tec" not in json.loads((out / "train_info.json").read_text())["sources"]
    bad = _args(root, root / "exp" / "bad" / "fold1", "sec_tec_nosearch", "--sec_layers", "[0,1,9]")
    assert trainer.main(bad) == 2
    assert "layer 9 not stored" in capsys.readouterr().err


def test_ctc_greedy_transcripts_merge_repeats_and_drop_blanks(tmp_path):
    import torch

    from serkit.speechbrain.mfsn_text import ctc_greedy_transcripts

    (tmp_path / "dict.ltr.txt").write_text("| 10\nH 5\nI 4\n")
    V = 7  # <s> <pad> </s> <unk> | H I
    inner = {"model": {"_name": "wav2vec2", "encoder_layers": 12}, "task": {"_name": "audio_pretraining"}}
    cfg = {"model": {"_name": "wav2vec_ctc", "w2v_args": inner},
           "task": {"_name": "audio_pretraining", "normalize": False}}  # post-LN: no final layer norm
    weights = {"w2v_encoder.proj.weight": torch.eye(V), "w2v_encoder.proj.bias": torch.zeros(V),
               "w2v_encoder.w2v_model.mask_emb": torch.zeros(V)}
    torch.save({"cfg": cfg, "model": weights}, tmp_path / "ctc.pt")
    # frames: H H <blank> I | | H I I  ->  "hi hi"
    ids = [5, 5, 0, 6, 4, 4, 5, 0, 6, 6]

    class Reader:
        def load(self, utt, layers):
            return np.eye(V, dtype=np.float32)[ids][None]

    out = ctc_greedy_transcripts(tmp_path / "ctc.pt", tmp_path / "dict.ltr.txt", Reader(), 12, ["u1"])
    assert out == {"u1": "hi hi"}
    (tmp_path / "bad.txt").write_text("| 1\n")
    with pytest.raises(SerkitError, match="dictionary"):
        ctc_greedy_transcripts(tmp_path / "ctc.pt", tmp_path / "bad.txt", Reader(), 12, ["u1"])


@pytest.mark.slow
def test_text_ablation_trains_tokenizer_on_train_split_only(fold, monkeypatch):
    from serkit.speechbrain import mfsn_text

    root, splits = fold
    monkeypatch.chdir(REPO)
    words = {"ang": "i am so angry now", "hap": "what a lovely day", "sad": "i miss her so much"}
    text = root / "text"
    # The test split has words nowhere else: they must not enter the tokenizer.
    text.write_text("".join(f"{u.utt} {words[u.emo]}{' zebra quokka' if s == 'test' else ''}\n"
                            for s, us in splits.items() for u in us))
    out = root / "exp" / "text" / "fold1"
    args = _args(root, out, "mfsn")
    args[args.index("--tec-feats"):args.index("--tec-feats") + 2] = []
    args[0] = "recipes/IEMOCAP/conf/mfsn_text.yaml"
    args += ["--text", str(text), "--text_vocab_size", "30", "--text_dim", "16", "--fusion_dim", "16",
             "--cnn_channels", "[4,8]", "--lstm_hidden", "8", "--attn_dim", "8", "--num_threads", "1",
             "--sec_layers", "[0,1,2]", "--num_heads", "2"]
    assert mfsn_text.main(args) == 0
    assert (out / "predictions" / "test.epoch002.tsv").is_file() and (out / "arch.txt").is_file()
    train_text = (out / "transcripts.train.txt").read_text()
    assert "zebra" not in train_text and len(train_text.splitlines()) == len(splits["train"])
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(out / "text_sp.model"))
    assert "zebra" not in {sp.id_to_piece(i).lstrip("▁") for i in range(sp.get_piece_size())}
    info = json.loads((out / "train_info.json").read_text())
    assert info["sources"]["tec"]["detached"] is False and "TEXT LEAK" in info["note"]


def _predictions(out):
    return {p.name: p.read_text() for p in sorted((out / "predictions").glob("*.tsv"))}


@pytest.mark.slow
@pytest.mark.parametrize("crash_at", [("search", 2), ("retrain", 2)])
def test_a_killed_fold_resumes_after_its_last_epoch_and_ends_as_an_uninterrupted_run(fold, monkeypatch,
                                                                                      crash_at):
    root, _ = fold
    monkeypatch.chdir(REPO)
    extra = ("--search_epochs", "3", "--number_of_epochs", "3")
    reference = root / "exp" / "resume_reference" / "fold1"
    if not (reference / "train_info.json").is_file():
        assert trainer.main([*_args(root, reference, "mfsn"), *extra]) == 0
    out = root / "exp" / f"resume_{crash_at[0]}" / "fold1"

    saves = []
    real_save = trainer.Resume.save

    def save_then_die(self, phase, epoch, *args, **kw):
        real_save(self, phase, epoch, *args, **kw)
        saves.append((phase, epoch))
        if (phase, epoch) == crash_at:
            raise KeyboardInterrupt  # killed right after that epoch's state was written

    monkeypatch.setattr(trainer.Resume, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        trainer.main([*_args(root, out, "mfsn"), *extra])
    assert (out / "resume.pt").is_file()
    before = {name: (out / "predictions" / name).stat().st_mtime_ns for name in _predictions(out)}

    saves.clear()
    monkeypatch.setattr(trainer.Resume, "save", lambda self, phase, epoch, *a, **k: (
        saves.append((phase, epoch)), real_save(self, phase, epoch, *a, **k)))
    assert trainer.main([*_args(root, out, "mfsn"), *extra]) == 0
    phases = ["search"] * 3 + ["retrain"] * 3
    all_epochs = list(zip(phases, [1, 2, 3, 1, 2, 3]))
    assert saves == all_epochs[all_epochs.index(crash_at) + 1:]  # finished epochs are not redone
    for name, stamp in before.items():  # nor are their predictions rewritten
        assert (out / "predictions" / name).stat().st_mtime_ns == stamp
    assert _predictions(out) == _predictions(reference)  # bit for bit what one uninterrupted run writes
    assert (out / "arch.txt").read_text() == (reference / "arch.txt").read_text()
    assert not (out / "resume.pt").exists() and json.loads((out / "train_info.json").read_text())["finished"]


@pytest.mark.slow
def test_a_resume_state_of_another_config_is_not_used(fold, monkeypatch, capsys):
    root, _ = fold
    monkeypatch.chdir(REPO)
    out = root / "exp" / "resume_other" / "fold1"
    real_save = trainer.Resume.save

    def die_after_first(self, *args, **kw):
        real_save(self, *args, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer.Resume, "save", die_after_first)
    with pytest.raises(KeyboardInterrupt):
        trainer.main(_args(root, out, "sec_tec_nosearch"))
    monkeypatch.setattr(trainer.Resume, "save", real_save)
    capsys.readouterr()
    assert trainer.main([*_args(root, out, "sec_tec_nosearch"), "--lr", "0.001"]) == 0
    assert "written with another config; starting over" in capsys.readouterr().err
    assert (out / "predictions" / "test.epoch001.tsv").is_file() and not (out / "resume.pt").exists()

    (out / "resume.pt").write_bytes(b"PK\x03\x04 truncated")
    assert trainer.main([*_args(root, out, "sec_tec_nosearch"), "--lr", "0.002"]) == 2
    assert "resume.pt: unreadable resume state" in capsys.readouterr().err
