"""Length-bucketed batching of SERBrain's loaders (hparams ``batching``), on IEMOCAP's real durations.

The items are ids with the durations of the 5531 utterances of IEMOCAP's 4-class set
(bench/data/iemocap_durations.tsv): sessions 1-4 train, session 5 split into valid and test, as a
leave-one-session-out fold. Only ids are loaded, so forming every batch of an epoch is cheap.
"""

from pathlib import Path

import pytest

sb = pytest.importorskip("speechbrain")

import torch  # noqa: E402

from serkit.speechbrain.brain import SERBrain  # noqa: E402
from serkit.speechbrain.train import _parse, _peek_yaml, prepare_run_opts  # noqa: E402
from serkit.utils import SerkitError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DURATIONS = ROOT / "bench" / "data" / "iemocap_durations.tsv"
SHARED_CONF = ROOT / "plugins" / "serkit" / "conf"


def iemocap_fold():
    """``{split: DynamicItemDataset}`` of ids with IEMOCAP's durations; valid/test sorted as fold_datasets."""
    from speechbrain.dataio.dataset import DynamicItemDataset

    rows = [
        line.split("\t")
        for line in DURATIONS.read_text().splitlines()
        if line and not line.startswith(("#", "session"))
    ]
    assert len(rows) == 5531
    data = {"train": {}, "valid": {}, "test": {}}
    for i, (session, duration) in enumerate(rows):
        split = "train" if session != "5" else ("valid", "test")[i % 2]
        data[split][f"utt{i:05d}"] = {"duration": float(duration)}
    out = {}
    for split, items in data.items():
        ds = DynamicItemDataset(items, output_keys=["id"])
        out[split] = ds if split == "train" else ds.filtered_sorted(sort_key="duration")
    return out, {u: d["duration"] for items in data.values() for u, d in items.items()}


def brain(**hparams):
    return SERBrain(modules={}, hparams=hparams, run_opts={"device": "cpu"})


def recipe_hparams(conf="shiftser.yaml", **changes):
    peek = _peek_yaml(SHARED_CONF / conf)
    keys = ("batching", "max_batch_length", "num_buckets", "seed", "batch_size")
    return {**{k: peek[k] for k in keys if k in peek}, **changes}


def epoch_batches(loader, epoch=1):
    sampler = getattr(loader, "batch_sampler", None)
    for s in (sampler, getattr(sampler, "sampler", None), getattr(loader, "sampler", None)):
        if hasattr(s, "set_epoch"):
            s.set_epoch(epoch)
    return [list(batch.id) for batch in loader]


def padding(batches, duration):
    padded = sum(len(b) * max(duration[u] for u in b) for b in batches)
    return 1.0 - sum(duration[u] for b in batches for u in b) / padded


def loaders(b, fold):
    return {
        "train": b.make_dataloader(fold["train"], sb.Stage.TRAIN, batch_size=32, shuffle=True),
        "valid": b.make_dataloader(fold["valid"], sb.Stage.VALID, batch_size=32),
        "test": b.make_dataloader(fold["test"], sb.Stage.TEST, batch_size=32),
    }


def test_recipe_loaders_pad_at_most_5_percent_on_iemocap_durations():
    fold, duration = iemocap_fold()
    hp = recipe_hparams()
    assert hp["batching"] == "dynamic" and hp["batch_size"] == 32
    for split, loader in loaders(brain(**hp), fold).items():
        batches = epoch_batches(loader)
        assert sorted(u for b in batches for u in b) == sorted(fold[split].data_ids)  # each once
        assert padding(batches, duration) <= 0.05, split
    # training batches hold batch_size utterances on average, give or take a bucket's last partial batch
    assert 24 <= len(fold["train"]) / len(epoch_batches(loaders(brain(**hp), fold)["train"])) <= 32


def test_random_batching_gives_speechbrains_shuffled_batches_of_batch_size():
    fold, duration = iemocap_fold()
    plain = sb.Brain(modules={}, run_opts={"device": "cpu"})
    want = epoch_batches(plain.make_dataloader(fold["train"], sb.Stage.TRAIN, batch_size=32, shuffle=True), 2)
    for hp in (recipe_hparams(batching="random"), {}):  # the option, and a yaml without the key
        b = brain(**hp)
        got = loaders(b, fold)
        assert epoch_batches(got["train"], 2) == want
        assert b.train_sampler is not None  # Brain.fit reshuffles every epoch
        assert [len(x) for x in want[:-1]] == [32] * (len(want) - 1)
        assert epoch_batches(got["test"]) == [
            fold["test"].data_ids[k : k + 32] for k in range(0, len(fold["test"]), 32)
        ]
    assert padding(want, duration) > 0.5  # what the dynamic batches avoid


def test_dynamic_batches_are_a_function_of_seed_and_epoch():
    """What a resumed run relies on: a new Brain at epoch e draws the batches the first one drew."""
    fold, _ = iemocap_fold()
    first = brain(**recipe_hparams())
    loader = first.make_dataloader(fold["train"], sb.Stage.TRAIN, batch_size=32, shuffle=True)
    assert first.train_sampler is loader.batch_sampler  # Brain.fit calls its set_epoch
    epochs = {e: epoch_batches(loader, e) for e in (1, 2, 3)}
    assert epochs[1] != epochs[2] != epochs[3]
    again = brain(**recipe_hparams()).make_dataloader(
        fold["train"], sb.Stage.TRAIN, batch_size=32, shuffle=True
    )
    assert epoch_batches(again, 3) == epochs[3]
    other = brain(**recipe_hparams(seed=7)).make_dataloader(
        fold["train"], sb.Stage.TRAIN, batch_size=32, shuffle=True
    )
    assert epoch_batches(other, 3) != epochs[3]


def test_max_batch_length_is_the_budget_of_padded_seconds_per_batch():
    fold, duration = iemocap_fold()
    loader = brain(**recipe_hparams(max_batch_length=60)).make_dataloader(
        fold["train"], sb.Stage.TRAIN, batch_size=32, shuffle=True
    )
    batches = epoch_batches(loader)
    # a bucket's few leftover utterances join its full batches: the budget plus at most one utterance
    assert max((len(b) - 1) * max(duration[u] for u in b) for b in batches) <= 60
    assert max(len(b) * max(duration[u] for u in b) for b in batches) > 60
    assert len(batches) > 2 * len(epoch_batches(loaders(brain(**recipe_hparams()), fold)["train"]))


def test_a_buckets_few_leftover_utterances_join_its_full_batches():
    """16 utterances, batch_size 8: SpeechBrain's sampler would form 9 + 1 short and 6 long; here 10 + 6."""
    from speechbrain.dataio.dataset import DynamicItemDataset

    lengths = [0.45, 0.45, 0.49, 0.53, 0.53, 0.54, 0.59, 0.6, 0.64, 0.65, 0.66, 0.69, 0.72, 0.83, 0.89, 0.9]
    ds = DynamicItemDataset({f"u{i:02d}": {"duration": d} for i, d in enumerate(lengths)}, output_keys=["id"])
    loader = brain(**recipe_hparams()).make_dataloader(ds, sb.Stage.TRAIN, batch_size=8, shuffle=True)
    for epoch in (1, 2, 3):
        batches = epoch_batches(loader, epoch)
        assert sorted(sorted(b) for b in batches) == [
            [f"u{i:02d}" for i in range(10)],
            [f"u{i:02d}" for i in range(10, 16)],
        ]


def test_unknown_batching_is_refused():
    fold, _ = iemocap_fold()
    with pytest.raises(SerkitError, match="batching: 'bucket' is not one of dynamic, random"):
        brain(batching="bucket").make_dataloader(fold["train"], sb.Stage.TRAIN, batch_size=32, shuffle=True)


def test_every_recipe_config_batches_by_length():
    # the overlays (*_mini) set sizes only and inherit batching from the config they overlay
    confs = sorted(
        p
        for p in [*SHARED_CONF.glob("*.yaml"), *ROOT.glob("recipes/*/conf/*.yaml")]
        if not p.stem.endswith("_mini")
    )
    # MFSN's included: its 3-second segments batch by duration like the heads' utterances
    assert [p.name for p in confs] == [
        "bas.yaml",
        "bas_search.yaml",
        "flea.yaml",
        "mfsn.yaml",
        "shiftser.yaml",
        "mfsn_text.yaml",
    ]
    for conf in confs:
        peek = _peek_yaml(conf)
        # FLEA's class-balanced sampler (official code) draws its own training batches
        expected = "random" if peek.get("class_balanced_sampler") else "dynamic"
        assert (peek.get("batching"), peek.get("max_batch_length"), peek.get("num_buckets")) == (
            expected,
            None,
            40,
        ), conf


def test_dynamic_batching_with_a_class_balanced_sampler_is_refused_by_name():
    brain = SERBrain(modules={}, hparams={"batching": "dynamic"}, run_opts={"device": "cpu"})
    dataset = sb.dataio.dataset.DynamicItemDataset({"u1": {"duration": 1.0}, "u2": {"duration": 2.0}})
    sampler = torch.utils.data.RandomSampler(range(2))
    with pytest.raises(SerkitError, match="class_balanced_sampler"):
        brain.batching_kwargs(dataset, sb.Stage.TRAIN, {"batch_size": 2, "sampler": sampler})


def test_precision_option_reaches_the_brain(tmp_path):
    """``serkit train ... --precision bf16`` reaches the Brain's run options (not measured: no GPU here)."""

    def brain_with(precision):
        args, run_opts, overrides = _parse(
            [
                str(SHARED_CONF / "shiftser.yaml"),
                "--method",
                "linear",
                "--fold-dir",
                str(tmp_path),
                "--output-folder",
                str(tmp_path / "out"),
                "--feats",
                str(tmp_path),
                "--precision",
                precision,
                "--batching",
                "random",
            ]
        )
        assert overrides == {"method": "linear", "batching": "random"}
        return SERBrain(modules={}, hparams={}, run_opts=prepare_run_opts(run_opts))

    assert brain_with("bf16").precision == "bf16"
    # SpeechBrain's own check of the option
    with pytest.raises(ValueError, match="fp16. This option is not yet supported on CPU"):
        brain_with("fp16")


def test_dynamic_batches_bucket_the_cropped_durations():
    """With ``max_duration`` the model sees at most that many seconds: buckets follow the cropped lengths."""
    fold, duration = iemocap_fold()
    cropped = {u: min(d, 7.5) for u, d in duration.items()}
    b = brain(**recipe_hparams(max_duration=7.5))
    for split, loader in loaders(b, fold).items():
        assert padding(epoch_batches(loader), cropped) <= 0.05, split
    # padded to max_duration, every utterance is as long as the others: batches of batch_size exactly
    padded = brain(**recipe_hparams(max_duration=7.5, pad_to_max=True))
    sizes = sorted(len(x) for x in epoch_batches(loaders(padded, fold)["train"]))
    assert len(fold["train"]) == 134 * 32 + 2  # the 2 left over join 2 full batches
    assert sizes == [32] * 132 + [33] * 2


def test_results_say_which_batching_trained_the_run(tmp_path):
    """``serkit train`` records ``batching`` in train_info.json; RESULTS.md and the results table show it."""
    import json

    from serkit.scoring import results_table, score_run

    exp = tmp_path / "run"
    rows = "utt\tlabel\tpred\tang\thap\nu1\tang\tang\t0.9\t0.1\nu2\thap\thap\t0.2\t0.8\n"
    for k in (1, 2):
        pred = exp / f"fold{k}" / "predictions"
        pred.mkdir(parents=True)
        for split in ("valid", "test"):
            (pred / f"{split}.epoch001.tsv").write_text(rows)
        info = {"setting": "featex", "batching": "dynamic"}
        (exp / f"fold{k}" / "train_info.json").write_text(json.dumps(info))
    (exp / "run.json").write_text(json.dumps({"method": "shiftcnn", "setting": "featex"}))
    assert score_run(exp)["batching"] == "dynamic"
    assert "- Batching: dynamic" in (exp / "RESULTS.md").read_text()
    assert "| shiftcnn | featex (dynamic batches) |" in results_table([exp])
    (exp / "fold2" / "train_info.json").write_text(json.dumps({"setting": "featex"}))  # before the key
    assert "| shiftcnn | featex (dynamic, random batches) |" in results_table([exp], rule="valid")
