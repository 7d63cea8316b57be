"""Feature dumping: format, inputs, resuming after a crash, sharding + merge, FeatureReader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
kaldiio = pytest.importorskip("kaldiio")
sf = pytest.importorskip("soundfile")

from serkit.data.manifest import Utterance, write_split  # noqa: E402
from serkit.upstream import load_upstream, num_frames  # noqa: E402
from serkit.upstream.features import FeatureReader, collect_inputs, dump_features  # noqa: E402
from serkit.utils import SerkitError  # noqa: E402

LENGTHS = [8000, 6400, 12345, 4000, 9999, 7200, 5000]


def make_corpus(root: Path, lengths=LENGTHS, seed=0):
    """Short 16 kHz wavs, one speaker per pair, and a wav.scp data directory."""
    rng = np.random.default_rng(seed)
    (root / "wav").mkdir(parents=True, exist_ok=True)
    utts = []
    for i, n in enumerate(lengths):
        utt = f"spk{i // 2}_u{i}"
        wav = root / "wav" / f"{utt}.wav"
        t = np.arange(n) / 16000
        sf.write(
            wav,
            (0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t) + 0.05 * rng.standard_normal(n)).astype(np.float32),
            16000,
            subtype="FLOAT",
        )
        utts.append(Utterance(utt, str(wav), n, "neu" if i % 2 else "ang", f"spk{i // 2}"))
    data = root / "data"
    data.mkdir(exist_ok=True)
    (data / "wav.scp").write_text("".join(f"{u.utt} {u.wav}\n" for u in utts))
    return utts, data


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    from serkit.upstream.tiny import make_hubert_checkpoint

    return load_upstream(make_hubert_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=3))


def _files(d: Path) -> dict[str, bytes]:
    """Every output file's bytes, with the directory's own path replaced so two dirs can be compared."""
    out = {}
    for p in sorted(d.rglob("*")):
        if p.is_file() and p.name != "dump.json":
            out[str(p.relative_to(d))] = p.read_bytes().replace(str(d.resolve()).encode(), b"<OUT>")
    return out


def test_dump_format_and_reader(corpus, up, tmp_path):
    utts, data = corpus
    items = collect_inputs([str(data)])
    assert [i.utt for i in items] == [u.utt for u in utts]
    out = tmp_path / "feats"
    res = dump_features(up, items, out, layers="all", dtype="float16", chunk_utterances=3, progress=False)
    assert res["merged"] and res["utterances"] == len(utts)
    reader = FeatureReader(out)
    assert reader.layers == [0, 1, 2] and reader.dim == 64 and len(reader) == len(utts)
    scp = kaldiio.load_scp(str(out / "feats.scp"))  # plain kaldiio works (absolute paths)
    for u in utts:
        t = num_frames(u.num_samples)
        assert scp[u.utt].shape == (t, 3 * 64) and scp[u.utt].dtype == np.float16
        x = reader.load(u.utt)
        assert x.shape == (3, t, 64) and x.dtype == np.float32
        assert reader.num_frames(u.utt) == t
        wav, _ = sf.read(u.wav, dtype="float32")
        ref = up.extract(torch.from_numpy(wav)).numpy()
        np.testing.assert_allclose(x, ref, atol=2e-2, rtol=1e-2)  # float16 storage
        np.testing.assert_array_equal(reader.load(u.utt, layers=[2])[0], x[2])
    import json

    meta = json.loads((out / "meta.json").read_text())
    assert {k: meta[k] for k in ("kind", "layers", "dim", "dtype", "frame_rate", "normalize")} == {
        "kind": "hubert",
        "layers": [0, 1, 2],
        "dim": 64,
        "dtype": "float16",
        "frame_rate": 50.0,
        "normalize": False,
    }


def test_resume_after_crash_is_byte_identical(corpus, up, tmp_path, monkeypatch):
    utts, data = corpus
    items = collect_inputs([str(data)])
    ref = tmp_path / "ref"
    dump_features(up, items, ref, layers=[1, 2], dtype="float32", chunk_utterances=2, progress=False)

    out = tmp_path / "crashed"
    calls = {"n": 0}
    real = type(up).extract

    def dying(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 4:  # in the middle of the second chunk
            raise KeyboardInterrupt("simulated kill")
        return real(self, *a, **kw)

    monkeypatch.setattr(type(up), "extract", dying)
    with pytest.raises(KeyboardInterrupt):
        dump_features(up, items, out, layers=[1, 2], dtype="float32", chunk_utterances=2, progress=False)
    monkeypatch.setattr(type(up), "extract", real)
    assert not (out / "feats.scp").exists()  # an interrupted dump never looks complete
    assert sorted(p.name for p in (out / "parts").glob("*.scp")) == ["part-00000.scp"]
    with pytest.raises(SerkitError, match="re-run the same dump-features command"):
        FeatureReader(out)

    res = dump_features(up, items, out, layers=[1, 2], dtype="float32", chunk_utterances=2, progress=False)
    assert res["utterances"] == len(utts) - 2  # the finished chunk is not recomputed
    assert _files(out) == _files(ref)
    assert not list((out / "parts").glob(".*tmp*"))


def test_shards_then_merge_equal_single_run(corpus, up, tmp_path):
    _, data = corpus
    items = collect_inputs([str(data)])
    single = tmp_path / "single"
    dump_features(up, items, single, layers=[2], chunk_utterances=2, progress=False)
    sharded = tmp_path / "sharded"
    r0 = dump_features(up, items, sharded, layers=[2], chunk_utterances=2, shard=0, nshard=3, progress=False)
    assert not r0["merged"] and not (sharded / "feats.scp").exists()
    dump_features(up, items, sharded, layers=[2], chunk_utterances=2, shard=2, nshard=3, progress=False)
    r1 = dump_features(up, items, sharded, layers=[2], chunk_utterances=2, shard=1, nshard=3, progress=False)
    assert r1["merged"]  # the last shard to finish merges
    assert _files(sharded) == _files(single)


def test_changed_options_are_refused(corpus, up, tmp_path):
    _, data = corpus
    items = collect_inputs([str(data)])
    out = tmp_path / "f"
    dump_features(up, items[:2], out, layers=[2], progress=False)
    with pytest.raises(SerkitError, match="other options"):
        dump_features(up, items[:2], out, layers=[1], progress=False)


def test_inputs_fold_and_plain_tsv(corpus, tmp_path):
    utts, _ = corpus
    fold = tmp_path / "fold1"
    root = str(Path(utts[0].wav).parent)
    write_split(fold, "train", utts[:4], root)
    write_split(fold, "test", utts[4:], root)
    assert [i.utt for i in collect_inputs([str(fold)])] == [u.utt for u in utts]
    assert [i.utt for i in collect_inputs([str(fold / "test.tsv")])] == [u.utt for u in utts[4:]]
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "x.tsv").write_text((fold / "train.tsv").read_text())
    got = collect_inputs([str(plain / "x.tsv")])
    assert [(i.utt, i.num_samples) for i in got] == [(u.utt, u.num_samples) for u in utts[:4]]  # utt = stem
    with pytest.raises(SerkitError, match="not found"):
        collect_inputs([str(tmp_path / "nothing")])


def test_mfcc_dump_cli(corpus, tmp_path):
    from serkit.cli import main

    _, data = corpus
    out = tmp_path / "mfcc"
    assert (
        main(
            [
                "dump-features",
                "--upstream",
                "mfcc",
                "--data",
                str(data),
                "--out",
                str(out),
                "--dtype",
                "float32",
                "--no-progress",
            ]
        )
        == 0
    )
    reader = FeatureReader(out)
    assert reader.layers == [0] and reader.dim == 39
    u = next(iter(reader.keys()))
    assert reader.load(u).shape[1] == reader.num_frames(u)


def test_reader_survives_moving_the_directory(corpus, up, tmp_path):
    _, data = corpus
    items = collect_inputs([str(data)])[:2]
    out = tmp_path / "a"
    dump_features(up, items, out, layers=[0], progress=False)
    before = FeatureReader(out).load(items[0].utt)
    moved = tmp_path / "b"
    out.rename(moved)
    np.testing.assert_array_equal(FeatureReader(moved).load(items[0].utt), before)


def test_full_disk_names_the_chunk_and_keeps_the_finished_ones(corpus, up, tmp_path, monkeypatch):
    import errno

    from serkit.utils import DiskFull

    utts, data = corpus
    items = collect_inputs([str(data)])
    ref = tmp_path / "ref"
    dump_features(up, items, ref, layers=[2], dtype="float32", chunk_utterances=2, progress=False)

    out = tmp_path / "full"
    real_save = kaldiio.save_ark
    calls = {"n": 0}

    def full_disk(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:  # the first utterance of the second chunk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(*a, **kw)

    monkeypatch.setattr(kaldiio, "save_ark", full_disk)
    with pytest.raises(DiskFull) as e:
        dump_features(up, items, out, layers=[2], dtype="float32", chunk_utterances=2, progress=False)
    assert str(e.value).startswith(f"{out / 'parts' / 'part-00001.ark'}: no space left on the device")
    assert "run the same command again to resume" in str(e.value)
    assert sorted(p.name for p in (out / "parts").iterdir() if not p.name.startswith(".serkit")) == [
        "part-00000.ark",
        "part-00000.scp",
    ]  # the finished chunk is kept, the half-written one is gone
    monkeypatch.setattr(kaldiio, "save_ark", real_save)
    res = dump_features(up, items, out, layers=[2], dtype="float32", chunk_utterances=2, progress=False)
    assert res["utterances"] == len(utts) - 2
    assert _files(out) == _files(ref)
