"""MFSN through `serkit train` (MFSNBrain): search -> arch.txt -> retrain, the ablations, resume,
predictions of utterances from their 3-second segments, and `serkit predict` on a finished fold."""

import json
import math

import numpy as np
import pytest

pytest.importorskip("speechbrain")
pytest.importorskip("fairseq")

from serkit.utils import SerkitError  # noqa: E402
from tests.fixtures.sb import CLASSES, REPO, read_predictions, split_ids  # noqa: E402

SHARED_CONF = REPO / "plugins" / "serkit" / "conf"
#: the CPU-sized MFSN: the shared config with the mfsn_mini overlay
CONF = SHARED_CONF / "mfsn.yaml"
MINI = ["--overlay", str(SHARED_CONF / "mfsn_mini.yaml")]


def _train(setup, out, *extra, conf=CONF):
    from serkit.speechbrain.train import main

    return main(
        [
            str(conf),
            *MINI,
            "--fold-dir",
            str(setup["fold"]),
            "--output-folder",
            str(out),
            "--feats",
            str(setup["feats"]),
            "--tec_feats",
            str(setup["feats"]),
            "--batch_size",
            "4",
            "--search_epochs",
            "2",
            "--train_epochs",
            "2",
            "--noprogressbar",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def searched(sb_tiny):
    setup = sb_tiny
    search = setup["root"] / "exp" / "mfsn_search" / "fold1"
    assert _train(setup, search) == 0
    retrain = setup["root"] / "exp" / "mfsn" / "fold1"
    assert _train(setup, retrain, "--arch", (search / "arch.txt").read_text().strip()) == 0
    return setup, search, retrain


@pytest.mark.slow
def test_search_writes_the_derived_cell_and_its_log(searched):
    from serkit.nn.mfsn import FUSION_OPS, parse_arch

    _, search, _ = searched
    arch = parse_arch((search / "arch.txt").read_text())
    assert arch["fusion_ops"][0] in FUSION_OPS and arch["sec_level"] in (0, 1, 2)
    detail = json.loads((search / "arch.json").read_text())
    assert detail["sec_level"] == arch["sec_level"] and len(detail["level_scores"]) == 3
    log = [json.loads(line) for line in (search / "search_log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2]
    assert math.isclose(sum(log[-1]["op_weights"].values()), 1.0, abs_tol=1e-6)
    # the architecture step moved the operation weights away from DARTS' near-uniform start
    assert max(log[-1]["op_weights"].values()) - min(log[-1]["op_weights"].values()) > 1e-3
    info = json.loads((search / "train_info.json").read_text())
    assert info["arch"] == (search / "arch.txt").read_text().strip()


@pytest.mark.slow
def test_retrain_writes_utterance_predictions_in_fold_order(searched):
    setup, search, out = searched
    for split in ("valid", "test"):
        for epoch in (1, 2):
            header, rows = read_predictions(out / "predictions" / f"{split}.epoch{epoch:03d}.tsv")
            assert header == ["utt", "label", "pred", *CLASSES]
            assert [r[0] for r in rows] == split_ids(setup["fold"], split)
            for r in rows:
                probs = [float(x) for x in r[3:]]
                assert math.isclose(sum(probs), 1.0, abs_tol=1e-4) and r[2] == CLASSES[int(np.argmax(probs))]
    assert not (out / "predictions" / "valid.epoch003.tsv").exists()
    info = json.loads((out / "train_info.json").read_text())
    assert info["method"] == "MFSN" and info["setting"] == "mfsn" and info["streams"] == "dual"
    assert info["arch"] == (search / "arch.txt").read_text().strip() and info["epochs_run"] == 2
    assert info["sources"]["tec"]["detached"] is True and info["sec_layers"] == [0, 1, 2]
    assert not (out / "arch.txt").exists()  # a retrain derives nothing
    # The same command again: nothing is redone.
    stamp = (out / "predictions" / "test.epoch002.tsv").stat().st_mtime_ns
    assert _train(setup, out, "--arch", info["arch"]) == 0
    assert (out / "predictions" / "test.epoch002.tsv").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_emotion_classifier_and_serkit_predict_on_a_finished_mfsn_fold(searched, capsys):
    from serkit.cli import main as serkit
    from serkit.speechbrain.interface import EmotionClassifier

    setup, _, out = searched
    clf = EmotionClassifier.from_hparams(source=str(out))
    best = clf.checkpoint.meta["epoch"]
    _, rows = read_predictions(out / "predictions" / f"test.epoch{best:03d}.tsv")
    for utt, _, pred, *probs in rows[:3]:
        out_prob, _, _, text = clf.classify_file(setup["root"] / "wavs" / f"{utt}.wav")
        assert text[0] == pred
        # both upstreams recomputed from the wav (the cache was float32): the training run's probabilities
        assert np.allclose(out_prob[0].numpy(), [float(p) for p in probs], atol=1e-3)
    capsys.readouterr()
    assert serkit(["predict", "--exp", str(out), str(setup["root"] / "wavs" / f"{rows[0][0]}.wav")]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert line["label"] == rows[0][2]


@pytest.mark.slow
@pytest.mark.parametrize("ablation", ["sec_only", "sec_tec_nosearch"])
def test_ablations_train_in_one_call(sb_tiny, ablation):
    setup = sb_tiny
    out = setup["root"] / "exp" / ablation / "fold1"
    extra = ["--ablation", ablation]
    if ablation == "sec_only":  # needs no TEC
        extra += ["--tec_feats", "null"]
    assert _train(setup, out, *extra) == 0
    assert (out / "predictions" / "test.epoch002.tsv").is_file() and not (out / "arch.txt").exists()
    info = json.loads((out / "train_info.json").read_text())
    assert info["setting"] == ablation and ("tec" in info["sources"]) == (ablation != "sec_only")


@pytest.mark.slow
def test_a_bad_sec_layer_and_a_missing_tec_are_named(sb_tiny):
    setup = sb_tiny
    with pytest.raises(SerkitError, match="layer 9 not stored"):
        _train(setup, setup["root"] / "exp" / "bad" / "fold1", "--sec_layers", "[0,1,9]")
    with pytest.raises(SerkitError, match="needs TEC features"):
        _train(setup, setup["root"] / "exp" / "bad2" / "fold1", "--tec_feats", "null")


def _predictions(out):
    return {p.name: p.read_text() for p in sorted((out / "predictions").glob("*.tsv"))}


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["search", "retrain"])
def test_a_killed_fold_resumes_after_its_last_epoch_and_ends_as_an_uninterrupted_run(
    sb_tiny, monkeypatch, phase
):
    import speechbrain as sb

    from serkit.speechbrain.mfsn import MFSNBrain

    setup = sb_tiny
    extra = ["--search_epochs", "3", "--train_epochs", "3"]
    if phase == "retrain":
        extra += ["--arch", "1:ism"]
    reference = setup["root"] / "exp" / f"resume_reference_{phase}" / "fold1"
    assert _train(setup, reference, *extra) == 0
    out = setup["root"] / "exp" / f"resume_{phase}" / "fold1"
    real_end = MFSNBrain.on_stage_end

    def end_then_die(self, stage, loss, epoch=None):
        real_end(self, stage, loss, epoch)
        if stage == sb.Stage.VALID and epoch == 2:
            raise KeyboardInterrupt  # killed right after epoch 2's checkpoint

    monkeypatch.setattr(MFSNBrain, "on_stage_end", end_then_die)
    with pytest.raises(KeyboardInterrupt):
        _train(setup, out, *extra)
    monkeypatch.setattr(MFSNBrain, "on_stage_end", real_end)
    before = {name: (out / "predictions" / name).stat().st_mtime_ns for name in _predictions(out)}
    assert _train(setup, out, *extra) == 0
    for name, stamp in before.items():  # finished epochs are not redone
        assert (out / "predictions" / name).stat().st_mtime_ns == stamp
    assert _predictions(out) == _predictions(reference)  # bit for bit what one uninterrupted run writes
    if phase == "search":
        assert (out / "arch.txt").read_text() == (reference / "arch.txt").read_text()
        assert (out / "search_log.jsonl").read_text() == (reference / "search_log.jsonl").read_text()


@pytest.mark.slow
def test_text_ablation_trains_tokenizer_on_train_split_only(sb_tiny):
    setup = sb_tiny
    fold = setup["fold"]
    words = {
        "ang": "i am so angry now",
        "hap": "what a lovely day",
        "neu": "the table is brown",
        "sad": "i miss her so much",
    }
    text = setup["root"] / "text"
    # The test split has words nowhere else: they must not enter the tokenizer.
    lines = []
    for split in ("train", "valid", "test"):
        meta = json.loads((fold / f"{split}.json").read_text())
        unseen = " zebra quokka" if split == "test" else ""
        lines += [f"{u} {words[m['emo']]}{unseen}\n" for u, m in meta.items()]
    text.write_text("".join(lines))
    out = setup["root"] / "exp" / "text" / "fold1"
    conf = REPO / "recipes" / "IEMOCAP" / "conf" / "mfsn_text.yaml"
    text_mini = ["--overlay", str(conf.parent / "mfsn_text_mini.yaml")]
    assert _train(setup, out, *text_mini, "--text", str(text), "--text_vocab_size", "30", conf=conf) == 0
    search_arch = (out / "arch.txt").read_text().strip()
    train_text = (out / "transcripts.train.txt").read_text()
    assert "zebra" not in train_text
    assert [line.split()[0] for line in train_text.splitlines()] == split_ids(fold, "train")
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(out / "text_sp.model"))
    assert "zebra" not in {sp.id_to_piece(i).lstrip("▁") for i in range(sp.get_piece_size())}
    info = json.loads((out / "train_info.json").read_text())
    assert info["sources"]["tec"]["detached"] is False and "TEXT LEAK" in info["note"]
    assert info["sources"]["tec"]["text"] == f"transcript {text}"
    assert info["arch"] == search_arch


@pytest.mark.slow
def test_waveform_path_trains_only_the_top_sec_layers_and_never_tec(sb_tiny):
    """`serkit train --upstream`: the encoders run on the segments; sec_finetune_layers of SEC train."""
    import torch

    from serkit.speechbrain.train import main

    setup = sb_tiny
    out = setup["root"] / "exp" / "mfsn_finetune" / "fold1"
    before = torch.load(setup["ckpt"], map_location="cpu", weights_only=False)["model"]
    assert (
        main(
            [
                str(CONF),
                *MINI,
                "--fold-dir",
                str(setup["fold"]),
                "--output-folder",
                str(out),
                "--upstream",
                str(setup["ckpt"]),
                "--tec_upstream",
                str(setup["ckpt"]),
                "--arch",
                "1:sum",
                "--batch_size",
                "4",
                "--train_epochs",
                "1",
                "--sec_finetune_layers",
                "1",
                "--noprogressbar",
            ]
        )
        == 0
    )
    assert (out / "predictions" / "test.epoch001.tsv").is_file()
    ckpt = next((out / "save").glob("CKPT+*"))
    sec = torch.load(ckpt / "upstream.ckpt", map_location="cpu")
    moved = [k for k, v in sec.items() if k.startswith("model.") and not torch.equal(v, before[k[6:]])]
    changed = {k.split(".")[3] if k.startswith("model.encoder.layers.") else k.split(".")[1] for k in moved}
    assert changed == {"1"}  # the top transformer layer of the 2, nothing below it
    info = json.loads((out / "train_info.json").read_text())
    assert info["setting"] == "mfsn" and info["feats"] is None
    with pytest.raises(SerkitError, match="cached features"):
        from serkit.speechbrain.interface import EmotionClassifier

        EmotionClassifier.from_hparams(source=str(out))


def _segments_of_iemocap_durations():
    """MFSN's training items on IEMOCAP's real durations: every 3-second segment of sessions 1-4's 4290
    utterances (bench/data/iemocap_durations.tsv), with the duration segment_datasets gives it."""
    import speechbrain as sb

    from serkit.nn.coattention import segment_starts

    rows = [
        line.split("\t")
        for line in (REPO / "bench" / "data" / "iemocap_durations.tsv").read_text().splitlines()
        if line and not line.startswith(("#", "session"))
    ]
    data = {}
    for i, (session, seconds) in enumerate(rows):
        if session == "5":
            continue
        samples = int(round(float(seconds) * 16000))
        for k, _ in enumerate(segment_starts(samples, 48000)):
            data[f"u{i:05d}#{k}"] = {"duration": min(samples, 48000) / 16000}
    assert len([u for u in data if u.endswith("#0")]) == 4290
    return sb.dataio.dataset.DynamicItemDataset(data, output_keys=["id"]), data


def _padding(batches, data):
    padded = sum(len(b) * max(data[u]["duration"] for u in b) for b in batches)
    return 1.0 - sum(data[u]["duration"] for b in batches for u in b) / padded


def _arch_batches(batching, epoch=1, passes=2, seed=3):
    import itertools

    import speechbrain as sb

    from serkit.speechbrain.mfsn import MFSNBrain

    dataset, data = _segments_of_iemocap_durations()
    brain = MFSNBrain(
        modules={},
        hparams={
            "batching": batching,
            "seed": seed,
            "max_batch_length": None,
            "num_buckets": 40,
            "train_dataloader_opts": {"batch_size": 32},
        },
        run_opts={"device": "cpu"},
    )
    brain._sets = {"valid": dataset}
    train = brain.make_dataloader(dataset, sb.Stage.TRAIN, batch_size=32, shuffle=True)
    n = len(train)
    arch = [list(b.id) for b in itertools.islice(brain._arch_batches(epoch), passes * n)]
    return [list(b.id) for b in train], arch, data, n


@pytest.mark.parametrize("batching", ["dynamic", "random"])
def test_mfsn_training_and_architecture_batches_follow_batching(batching):
    train, arch, data, n = _arch_batches(batching)
    for batches in (train, arch[:n], arch[n:]):  # every segment once per pass
        assert sorted(u for b in batches for u in b) == sorted(data)
    # most segments are 3 s: random batches pad 5.6 %, from the utterances under 3 s (measured: 0.0558)
    if batching == "dynamic":  # the short segments go together (measured: 1.2 %)
        assert _padding(train, data) < 0.015 and _padding(arch[:n], data) < 0.015
        assert arch[:n] != arch[n:]  # each pass over arch_data reshuffles
    else:  # batches of batch_size drawn at random, as before
        assert [len(b) for b in train[:-1]] == [32] * (n - 1) and _padding(train, data) > 0.05
    assert arch[:n] != train  # not the training batches' order
    assert _arch_batches(batching)[1] == arch  # a function of seed and epoch: a resumed epoch sees the same
    assert _arch_batches(batching, epoch=2)[1] != arch


@pytest.mark.slow
def test_segments_carry_their_duration_for_batching(sb_tiny):
    from serkit.data.manifest import read_split
    from serkit.speechbrain.mfsn import segment_datasets
    from serkit.upstream.features import FeatureReader

    setup = sb_tiny
    datasets, _ = segment_datasets(
        setup["fold"],
        FeatureReader(setup["feats"]),
        sec_layers=[0, 1, 2],
        ablation="sec_only",
        segment_seconds=1.0,
    )
    for split, ds in datasets.items():
        lengths = {u.utt: u.num_samples for u in read_split(setup["fold"], split)}
        for key in ds.data_ids:
            item = ds.data[key]
            assert item["duration"] == min(lengths[item["utt"]], 16000) / 16000, key
        assert {ds.data[k]["duration"] for k in ds.data_ids} != {1.0} or split != "train"
