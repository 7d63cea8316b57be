"""Reliability of the data commands: outputs never destroy inputs or foreign files, converted wavs are
reused only from the very same source, one writer per output, and bad input is refused by name."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import serkit.cli
import serkit.utils
from serkit.data import audio, datadir
from serkit.data.prepare_iemocap import prepare as prepare_iemocap
from serkit.data.prepare_meld import prepare as prepare_meld
from serkit.data.prepare_savee import prepare as prepare_savee
from serkit.data.splits import check_split, make_splits
from serkit.utils import SerkitError
from tests.fixtures.corpora import make_iemocap, make_meld, make_savee, tone

REPO = Path(__file__).resolve().parents[2]
MARKER = ".serkit-output"  # serkit.utils.MARKER, spelled out: the name is part of the interface


def read_marker(path: Path) -> dict | None:
    m = Path(path) / MARKER
    return json.loads(m.read_text()) if m.is_file() else None


def snapshot(root: Path) -> dict[str, str]:
    """relative path -> SHA-1 of every file under ``root``."""
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def cli(*argv: str) -> int:
    return serkit.cli.main([str(a) for a in argv])


def dump(data, out, *extra) -> int:
    return cli("dump-features", "--upstream", "mfcc", "--data", data, "--out", out, "--no-progress", *extra)


def km_fit(feats, fold, out) -> int:
    return cli(
        "kmeans",
        "fit",
        "--feats",
        feats,
        "--fold",
        fold,
        "--out",
        out,
        "--n-clusters",
        "3",
        "--backend",
        "sklearn",
    )


@pytest.fixture
def iemocap(tmp_path):
    return make_iemocap(tmp_path / "corpus", sessions=(1, 2))


# ------------------------------------------------------------------------------------- data loss


@pytest.mark.parametrize("where", ["root", "parent", "inside", "symlink"])
def test_prepare_out_overlapping_root_is_refused_before_writing(iemocap, tmp_path, where, capsys):
    before = snapshot(iemocap.parent)
    out = {"root": iemocap, "parent": iemocap.parent, "inside": iemocap / "data"}.get(where)
    if where == "symlink":
        out = tmp_path / "link"
        out.symlink_to(iemocap)
    rc = cli("prepare", "iemocap", "--root", iemocap, "--out", out, "--sessions", "1,2")
    assert rc == 2
    assert snapshot(iemocap.parent) == before  # not one byte of the corpus changed
    assert "Nothing was written" in capsys.readouterr().err
    assert sorted(p.name for p in iemocap.parent.iterdir()) == ["IEMOCAP_full_release"]


def test_prepare_savee_out_equal_to_root_keeps_the_original_wavs(tmp_path, capsys):
    root = make_savee(tmp_path, per_code=1)
    before = snapshot(root)
    assert cli("prepare", "savee", "--root", root, "--out", root) == 2
    assert snapshot(root) == before
    assert f"--out {root} is the input {root}" in capsys.readouterr().err


@pytest.mark.parametrize("corpus", ["iemocap", "savee", "meld"])
def test_prepare_never_replaces_a_directory_with_foreign_files(tmp_path, corpus, capsys):
    base = tmp_path / "corpus"
    root = {
        "iemocap": lambda: make_iemocap(base, sessions=(1, 2)),
        "meld": lambda: make_meld(base),
        "savee": lambda: make_savee(base, per_code=1),
    }[corpus]()
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("\\chapter{Years of work}\n")
    extra = ["--sessions", "1,2"] if corpus == "iemocap" else []
    assert cli("prepare", corpus, "--root", root, "--out", out, *extra) == 2
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]  # nothing written, nothing lost
    assert (out / "thesis.tex").read_text() == "\\chapter{Years of work}\n"
    err = capsys.readouterr().err
    assert f"{out}: not empty and not serkit's own prepare-{corpus} output (it holds thesis.tex)" in err


def test_prepare_refuses_a_foreign_kaldi_data_dir_and_another_corpus(iemocap, tmp_path):
    kaldi = tmp_path / "kaldi"
    kaldi.mkdir()
    for name in ("wav.scp", "utt2spk", "spk2utt", "text"):
        (kaldi / name).write_text("u1 x\n")
    with pytest.raises(SerkitError, match="not serkit's own prepare-iemocap output"):
        prepare_iemocap(iemocap, kaldi, sessions=[1, 2])
    assert sorted(p.name for p in kaldi.iterdir()) == ["spk2utt", "text", "utt2spk", "wav.scp"]
    savee = prepare_savee(make_savee(tmp_path / "s", per_code=1), tmp_path / "savee_data")
    with pytest.raises(SerkitError, match=r"serkit's prepare-savee output, not prepare-iemocap"):
        prepare_iemocap(iemocap, savee, sessions=[1, 2])
    assert datadir.load(savee).corpus == "savee"


def test_prepare_replaces_its_own_output_old_or_new(iemocap, tmp_path):
    out = prepare_iemocap(iemocap, tmp_path / "d", sessions=[1, 2])
    assert read_marker(out)["kind"] == "prepare-iemocap"
    assert "wav.scp" in read_marker(out)["files"]
    (out / ".options").write_text("root=x")  # the recipes' stage record
    prepare_iemocap(iemocap, out, sessions=[1])
    assert datadir.load(out).meta["options"]["sessions"] == [1]
    prepare_iemocap(iemocap, out, sessions=[1, 2])
    # folds split from it are serkit's too (stale once it is replaced)
    make_splits("iemocap_loso5", out, out / "iemocap_loso5")
    prepare_iemocap(iemocap, out, sessions=[1, 2])
    assert not (out / "iemocap_loso5").exists()
    # written by a version without markers: recognised by its prepare.json
    (out / MARKER).unlink()
    prepare_iemocap(iemocap, out, sessions=[1])
    (out / MARKER).unlink()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SerkitError, match="it holds notes.txt"):
        prepare_iemocap(iemocap, out, sessions=[1, 2])
    assert (out / "notes.txt").read_text() == "mine"


def test_split_out_equal_to_the_data_dir_is_refused(iemocap, tmp_path, capsys):
    data = prepare_iemocap(iemocap, tmp_path / "d", sessions=[1, 2])
    before = snapshot(data)
    assert cli("split", "iemocap_loso5", data, "--out", data) == 2
    assert snapshot(data) == before
    assert "contains the input" in capsys.readouterr().err
    assert cli("split", "iemocap_loso5", data, "--out", tmp_path) == 2  # a parent of the data
    assert snapshot(data) == before
    # the default, DATA_DIR/PROTOCOL, reads nothing it writes over
    assert cli("split", "iemocap_loso5", data) == 0
    assert read_marker(data / "iemocap_loso5")["kind"] == "split"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    assert cli("split", "iemocap_loso5", data, "--out", tmp_path / "mine") == 2
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "x"


def test_mini_corpus_never_replaces_foreign_files(tmp_path):
    (tmp_path / "SAVEE").mkdir()
    (tmp_path / "SAVEE" / "thesis.tex").write_text("x")
    assert cli("mini-corpus", "savee", "--out", tmp_path) == 2
    assert sorted(p.name for p in (tmp_path / "SAVEE").iterdir()) == ["thesis.tex"]
    assert cli("mini-corpus", "savee", "--out", tmp_path / "new") == 0
    assert cli("mini-corpus", "savee", "--out", tmp_path / "new") == 0  # its own output: rebuilt
    assert read_marker(tmp_path / "new" / "SAVEE")["kind"] == "mini-corpus-savee"


def test_outputs_honour_the_umask(iemocap, tmp_path):
    old = os.umask(0o022)
    try:
        out = prepare_iemocap(iemocap, tmp_path / "d", sessions=[1, 2])
        folds = make_splits("iemocap_loso5", out, tmp_path / "s")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o755
    assert (out / "wav.scp").stat().st_mode & 0o777 == 0o644
    assert (out / "prepare.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "s").stat().st_mode & 0o777 == 0o755
    assert (folds[0] / "train.tsv").stat().st_mode & 0o777 == 0o644


class _FullFile:
    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, *_):
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.f, name)


def _full_disk_open(path, mode="r", *a, **kw):
    """open() on a full file system: writing raises ENOSPC."""
    f = open(path, mode, *a, **kw)
    return _FullFile(f) if "w" in mode else f


def test_full_disk_names_the_file_and_loses_nothing(iemocap, tmp_path, monkeypatch, capsys):
    out = prepare_iemocap(iemocap, tmp_path / "d", sessions=[1, 2])
    before = snapshot(out)
    monkeypatch.setattr(serkit.utils, "open", _full_disk_open, raising=False)
    assert cli("prepare", "iemocap", "--root", iemocap, "--out", out, "--sessions", "1") == 2
    err = capsys.readouterr().err
    assert f"{out}/wav.scp: no space left on the device" in err
    assert "nothing already written was changed" in err
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "d"]  # no temporary left behind


# --------------------------------------------------------------------------- reuse of converted wavs


def _retone(path: Path, seed: int) -> None:
    info = sf.info(path)
    sf.write(path, tone(info.frames, seed, channels=info.channels), info.samplerate, subtype="PCM_16")


def test_savee_reconverts_a_replaced_source(tmp_path):
    root = make_savee(tmp_path / "a", per_code=1)
    out = prepare_savee(root, tmp_path / "d")
    src = root / "AudioData" / "DC" / "a01.wav"
    _retone(src, seed=999)  # same name and length, other audio
    prepare_savee(root, out)
    expect = tmp_path / "expect.wav"
    audio.convert_wav(src, expect)
    assert (out / "wavs" / "DC_a01.wav").read_bytes() == expect.read_bytes()
    assert datadir.load(out).meta["extraction"]["reused_wavs"] == 31


def test_savee_another_root_is_converted_from_that_root(tmp_path):
    first = make_savee(tmp_path / "a", per_code=1)
    out = prepare_savee(first, tmp_path / "d")
    second = make_savee(tmp_path / "b", per_code=1)
    for p in (second / "AudioData").rglob("[!.]*.wav"):  # not the AppleDouble files
        _retone(p, seed=len(p.name) * 7 + ord(p.parent.name[0]))
    prepare_savee(second, out)
    meta = datadir.load(out).meta
    assert meta["root"] == str(second) and meta["extraction"]["reused_wavs"] == 0
    expect = tmp_path / "expect.wav"
    audio.convert_wav(second / "AudioData" / "KL" / "su01.wav", expect)
    assert (out / "wavs" / "KL_su01.wav").read_bytes() == expect.read_bytes()
    records = json.loads((out / "wavs" / "sources.json").read_text())
    assert records["KL_su01"]["source"]["path"] == str(second / "AudioData" / "KL" / "su01.wav")


def test_savee_corrupted_source_with_the_same_size_and_mtime_is_not_served_from_old_audio(tmp_path):
    root = make_savee(tmp_path / "a", per_code=1)
    out = prepare_savee(root, tmp_path / "d")
    src = root / "AudioData" / "JK" / "h01.wav"
    st = src.stat()
    data = bytearray(src.read_bytes())
    data[0:4] = b"JUNK"  # the RIFF header is gone, size unchanged
    src.write_bytes(bytes(data))
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(SerkitError, match=rf"{src}: unreadable audio"):
        prepare_savee(root, out)


@pytest.fixture
def meld_release(tmp_path):
    return make_meld(tmp_path / "m")


def test_meld_missing_clip_is_skipped_not_served_from_an_old_wav(meld_release, tmp_path):
    out = prepare_meld(meld_release, tmp_path / "d")
    assert "train_dia0_utt0" in datadir.load(out).records
    (meld_release / "train" / "train_splits" / "dia0_utt0.mp4").unlink()
    prepare_meld(meld_release, out)
    d = datadir.load(out)
    assert "train_dia0_utt0" not in d.records
    assert "train_dia0_utt0\t-\tmissing clip" in (out / "skipped.tsv").read_text()


def test_meld_replaced_clip_is_decoded_again(meld_release, tmp_path, monkeypatch):
    from tests.fixtures.corpora import write_mp4

    out = prepare_meld(meld_release, tmp_path / "d")
    clip = meld_release / "train" / "train_splits" / "dia1_utt0.mp4"
    write_mp4(clip, 0.6, layout="stereo", silent=False, seed=77)
    decoded = []
    real = audio.decode_av
    monkeypatch.setattr(audio, "decode_av", lambda p, *a: decoded.append(Path(p).name) or real(p, *a))
    prepare_meld(meld_release, out)
    assert "dia1_utt0.mp4" in decoded
    assert datadir.load(out).records["train_dia1_utt0"].num_samples == len(real(clip))


# -------------------------------------------------------------------------------------- bad input


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: 44 + (len(data) - 44) // 2])


def test_truncated_iemocap_wav_is_refused_or_dropped(iemocap, tmp_path, capsys):
    wav = iemocap / "Session2/sentences/wav/Ses02F_impro01/Ses02F_impro01_M000.wav"
    _truncate(wav)
    with pytest.raises(SerkitError, match=rf"{wav}: truncated: its header declares \d+ bytes"):
        prepare_iemocap(iemocap, tmp_path / "d", sessions=[1, 2])
    assert not (tmp_path / "d").exists()
    assert (
        cli(
            "prepare",
            "iemocap",
            "--root",
            iemocap,
            "--out",
            tmp_path / "d",
            "--sessions",
            "1,2",
            "--allow-truncated",
        )
        == 0
    )
    d = datadir.load(tmp_path / "d")
    assert "Ses02F_impro01_M000" not in d.records
    assert d.meta["truncated"] == [str(wav)]
    assert d.meta["dropped"]["truncated wav (--allow-truncated)"] == 1


def test_truncated_savee_source_is_refused_or_dropped(tmp_path):
    root = make_savee(tmp_path / "a", per_code=1)
    src = root / "AudioData" / "JE" / "f01.wav"
    _truncate(src)
    with pytest.raises(SerkitError, match=rf"{src}: truncated"):
        prepare_savee(root, tmp_path / "d")
    d = datadir.load(prepare_savee(root, tmp_path / "d", allow_truncated=True))
    assert "JE_f01" not in d.records and len(d.records) == 31
    assert d.meta["truncated"] == [str(src)]


def test_meld_csv_with_a_missing_closing_quote_is_refused_with_the_line(meld_release, tmp_path):
    csv_path = meld_release / "train" / "train_sent_emo.csv"
    header = csv_path.read_text(encoding="utf-8").splitlines()[0]
    csv_path.write_text(
        header
        + "\n"
        + textwrap.dedent("""\
        1,"Oh my God,Chandler,joy,neutral,0,0,3,19,00:14:38,00:14:40
        2,Then go.",The Interviewer,neutral,neutral,0,1,3,19,00:14:38,00:14:40
        3,"No, no, no.",Mrs. Geller,Anger,neutral,1,0,3,19,00:14:38,00:14:40
        """),
        encoding="utf-8",
    )
    with pytest.raises(SerkitError, match=rf"{csv_path}:2: this row runs on to line 3 and swallows 1 row"):
        prepare_meld(meld_release, tmp_path / "d")
    assert not (tmp_path / "d").exists()


def _evaluation(root: Path) -> Path:
    return root / "Session1" / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt"


def test_emo_evaluation_cut_mid_turn_is_refused(iemocap, tmp_path):
    ev = _evaluation(iemocap)
    lines = ev.read_text().splitlines()
    last_turn = max(i for i, line in enumerate(lines) if line.startswith("["))
    ev.write_text("\n".join(lines[: last_turn + 1]) + "\n")  # the last turn lost its evaluations
    with pytest.raises(SerkitError, match=rf"{ev}: ends mid-turn \(the turn at line {last_turn + 1} has no"):
        prepare_iemocap(iemocap, tmp_path / "d", sessions=[1, 2])
    ev.write_text("\n".join(lines[: last_turn + 2])[:-3])  # cut inside its first evaluation line
    with pytest.raises(SerkitError, match=rf"{ev}: ends mid-turn \(the turn at line {last_turn + 1} is cut"):
        prepare_iemocap(iemocap, tmp_path / "d", sessions=[1, 2])


def test_emo_evaluation_cut_between_turns_warns_per_file(iemocap, tmp_path, caplog):
    ev = _evaluation(iemocap)
    lines = ev.read_text().splitlines()
    turns = [i for i, line in enumerate(lines) if line.startswith("[")]
    ev.write_text("\n".join(lines[: turns[-2]]) + "\n")  # the last two turns are gone
    caplog.set_level("INFO", logger="serkit")
    serkit.utils.log.propagate = True
    try:
        prepare_iemocap(iemocap, tmp_path / "d", sessions=[1, 2])
    finally:
        serkit.utils.log.propagate = False
    warnings = sorted(
        {
            m
            for r in caplog.records
            if r.levelname == "WARNING" and "no line for" in (m := r.getMessage()) and str(ev) in m
        }
    )
    # the fixture's unlabelled wav (F003) plus the two cut turns
    assert len(warnings) == 1 and f"{ev} has no line for 3 wav(s)" in warnings[0]


def test_check_split_ignores_a_doctored_fold_json_and_json_speakers(tmp_path):
    data = prepare_savee(make_savee(tmp_path / "a", per_code=2), tmp_path / "d")
    folds = make_splits("savee_loso4", data, tmp_path / "s")
    fold = folds[0]
    from serkit.data.manifest import read_split, write_split

    splits = {s: read_split(fold, s) for s in ("train", "valid", "test")}
    # a test utterance moved to train under a made-up json speaker; fold.json claims shared speakers
    moved = splits["test"][0]
    disguised = type(moved)(moved.utt, moved.wav, moved.num_samples, moved.emo, "ZZ")
    write_split(fold, "train", splits["train"] + [disguised], root=str(data))
    write_split(fold, "test", splits["test"][1:], root=str(data))
    info = json.loads((fold / "fold.json").read_text())
    info.update(speaker_dependent=True, num_utts={s: len(read_split(fold, s)) for s in splits})
    info["speakers"]["train"] = sorted({u.spk for u in read_split(fold, "train")})
    (fold / "fold.json").write_text(json.dumps(info))
    with pytest.raises(SerkitError) as e:
        check_split(tmp_path / "s")
    msg = str(e.value)
    assert "says speaker_dependent=True, but savee_loso4 is speaker-independent" in msg
    assert f"speaker of {moved.utt} is 'ZZ', utt2spk of {data} says 'DC'" in msg
    assert "speaker(s) ['DC'] in both train and test" in msg


def test_one_speaker_split_says_why(tmp_path, capsys):
    data = prepare_savee(make_savee(tmp_path / "a", per_code=1, speakers=("DC",)), tmp_path / "d")
    assert cli("split", "savee_loso4", data, "--out", tmp_path / "s") == 2
    err = capsys.readouterr().err
    assert "savee_loso4 fold 1 (test DC): the train and valid split(s) would be empty" in err
    assert "1 speaker(s) (DC)" in err and ".tmp-" not in err
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------------------------------------- k-means args


@pytest.mark.parametrize(
    "args,message",
    [
        (["--n-clusters", "0"], "--n-clusters 0: must be at least 1"),
        (["--n-clusters", "-1"], "--n-clusters -1: must be at least 1"),
        (["--n-clusters", "4", "--max-frames", "0"], "--max-frames 0: must be at least 1"),
    ],
)
def test_kmeans_fit_rejects_bad_numbers_cleanly(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        cli("kmeans", "fit", "--feats", tmp_path, "--fold", tmp_path, "--out", tmp_path / "m.npz", *args)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- locking

# Holds flock(2) on a lock file the way serkit documents it (an exclusive holder records itself as
# JSON: pid, host, since, command), without serkit's code: any process holding the lock excludes serkit.
HOLDER = """
import fcntl, json, os, socket, sys, time
from pathlib import Path
out, lock, mode, ready, release = sys.argv[1:]
Path(lock).parent.mkdir(parents=True, exist_ok=True)
fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_SH if mode == "shared" else fcntl.LOCK_EX)
if mode != "shared":
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": "now",
                             "command": f"serkit dump-features --out {out} (holder)"}).encode())
Path(ready).write_text("held")
while not Path(release).exists():
    time.sleep(0.05)
"""


class Holder:
    """A second process holding a lock until released."""

    def __init__(self, tmp_path: Path, lock: Path, shared: bool = False):
        self.ready, self.done = tmp_path / "ready", tmp_path / "release"
        for p in (self.ready, self.done):
            p.unlink(missing_ok=True)
        env = dict(os.environ, PYTHONPATH=str(REPO / "plugins"))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                HOLDER,
                str(lock.parent),
                str(lock),
                "shared" if shared else "x",
                str(self.ready),
                str(self.done),
            ],
            env=env,
        )
        for _ in range(400):
            if self.ready.exists():
                return
            assert self.proc.poll() is None, "the holder died"
            import time

            time.sleep(0.05)
        raise AssertionError("holder never took the lock")

    def release(self) -> None:
        self.done.write_text("go")
        assert self.proc.wait(timeout=30) == 0


@pytest.fixture
def tiny_fold(tmp_path):
    from serkit.data.manifest import Utterance, write_split

    rng = np.random.default_rng(0)
    (tmp_path / "wav").mkdir()
    utts = []
    for i in range(6):
        wav = tmp_path / "wav" / f"s{i % 3}_u{i}.wav"
        sf.write(wav, (0.1 * rng.standard_normal(4000 + 800 * i)).astype(np.float32), 16000)
        utts.append(Utterance(f"s{i % 3}_u{i}", str(wav), 4000 + 800 * i, "neu", f"s{i % 3}"))
    fold = tmp_path / "fold1"
    write_split(
        fold,
        "train",
        [u for u in utts if u.spk == "s0"] + [u for u in utts if u.spk == "s1"],
        str(tmp_path / "wav"),
    )
    write_split(fold, "valid", [u for u in utts if u.spk == "s2"][:1], str(tmp_path / "wav"))
    write_split(fold, "test", [u for u in utts if u.spk == "s2"][1:], str(tmp_path / "wav"))
    return fold


def test_second_dump_features_on_one_output_fails_at_once_naming_the_holder(tiny_fold, tmp_path, capsys):
    feats = tmp_path / "feats"
    holder = Holder(tmp_path, feats / ".serkit-lock")
    try:
        rc = dump(tiny_fold, feats)
        assert rc == 2
        err = capsys.readouterr().err
        assert f"feature directory {feats} is in use by pid {holder.proc.pid} on " in err
        assert f"serkit dump-features --out {feats} (holder)" in err
        assert not (feats / "feats.scp").exists()
        # shards run side by side; only the unsharded run above is excluded by a shard
    finally:
        holder.release()
    shard = Holder(tmp_path, feats / ".serkit-lock.shard-0-of-2", shared=False)
    try:
        assert dump(tiny_fold, feats, "--shard", "1", "--nshard", "2", "--chunk-utterances", "2") == 0
        assert dump(tiny_fold, feats, "--shard", "0", "--nshard", "2", "--chunk-utterances", "2") == 2
    finally:
        shard.release()
    assert dump(tiny_fold, feats, "--chunk-utterances", "2") == 0
    assert (feats / "feats.scp").is_file() and read_marker(feats)["kind"] == "features"


def test_second_kmeans_on_one_output_fails_at_once(tiny_fold, tmp_path, capsys):
    feats = tmp_path / "feats"
    assert dump(tiny_fold, feats) == 0
    model = tmp_path / "km" / "km.model"
    holder = Holder(tmp_path, model.parent / ".serkit-lock.km.model")
    try:
        assert km_fit(feats, tiny_fold, model) == 2
        assert f"k-means model {model} is in use by pid {holder.proc.pid}" in capsys.readouterr().err
    finally:
        holder.release()
    assert km_fit(feats, tiny_fold, model) == 0
    holder = Holder(tmp_path, model.parent / ".serkit-lock")
    try:
        assert (
            cli(
                "kmeans",
                "apply",
                "--model",
                model,
                "--feats",
                feats,
                "--fold",
                tiny_fold,
                "--out",
                model.parent,
            )
            == 2
        )
        assert (
            f"k-means label directory {model.parent} is in use by pid {holder.proc.pid}"
            in capsys.readouterr().err
        )
    finally:
        holder.release()
    assert (
        cli("kmeans", "apply", "--model", model, "--feats", feats, "--fold", tiny_fold, "--out", model.parent)
        == 0
    )
    assert (model.parent / "train.km").is_file()


def test_kmeans_fit_init_sample_below_k_says_so(tiny_fold, tmp_path, capsys):
    assert dump(tiny_fold, tmp_path / "feats") == 0
    assert (
        cli(
            "kmeans",
            "fit",
            "--feats",
            tmp_path / "feats",
            "--fold",
            tiny_fold,
            "--out",
            tmp_path / "m.npz",
            "--n-clusters",
            "50",
            "--init-sample",
            "20",
        )
        == 2
    )
    assert "--init-sample 20 is below --n-clusters 50" in capsys.readouterr().err
    assert not (tmp_path / "m.npz").exists()


def test_kmeans_fit_never_overwrites_a_foreign_file(tiny_fold, tmp_path, capsys):
    assert dump(tiny_fold, tmp_path / "feats") == 0
    (tmp_path / "thesis.tex").write_text("x")
    assert km_fit(tmp_path / "feats", tiny_fold, tmp_path / "thesis.tex") == 2
    assert (tmp_path / "thesis.tex").read_text() == "x"
    assert "is not a serkit k-means model" in capsys.readouterr().err


def test_outputs_of_dump_features_and_kmeans_apply_may_not_be_inputs(tiny_fold, tmp_path, capsys):
    assert (
        cli("dump-features", "--upstream", "mfcc", "--data", tiny_fold, "--out", tiny_fold, "--no-progress")
        == 2
    )
    assert "is the input" in capsys.readouterr().err
    assert not (tiny_fold / "feats.scp").exists() and not (tiny_fold / MARKER).exists()
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "feats.scp").write_text("mine\n")
    assert (
        cli(
            "dump-features",
            "--upstream",
            "mfcc",
            "--data",
            tiny_fold,
            "--out",
            tmp_path / "foreign",
            "--no-progress",
        )
        == 2
    )
    assert (tmp_path / "foreign" / "feats.scp").read_text() == "mine\n"
    feats = tmp_path / "feats"
    assert dump(tiny_fold, feats) == 0
    model = tmp_path / "km.model"
    assert km_fit(feats, tiny_fold, model) == 0
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "train.km").write_text("my labels\n")
    assert (
        cli(
            "kmeans",
            "apply",
            "--model",
            model,
            "--feats",
            feats,
            "--fold",
            tiny_fold,
            "--out",
            tmp_path / "labels",
        )
        == 2
    )
    assert (tmp_path / "labels" / "train.km").read_text() == "my labels\n"
    assert (
        cli("kmeans", "apply", "--model", model, "--feats", feats, "--fold", tiny_fold, "--out", feats) == 2
    )
    assert "is the input" in capsys.readouterr().err


def test_lock_is_released_when_the_holder_is_killed(tmp_path):
    lock = tmp_path / "out" / ".serkit-lock"
    holder = Holder(tmp_path, lock)
    holder.proc.kill()
    holder.proc.wait()
    with serkit.utils.output_lock(lock, "out"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert lock.read_text() == ""
    shutil.rmtree(tmp_path / "out")


# ------------------------------------------------------------------ outputs of earlier serkit versions


def test_split_written_before_markers_is_replaced_but_not_with_foreign_files(iemocap, tmp_path):
    data = prepare_iemocap(iemocap, tmp_path / "d", sessions=[1, 2])
    make_splits("iemocap_loso5", data, tmp_path / "s")
    (tmp_path / "s" / MARKER).unlink()  # as an earlier version left it: split.json + fold*/
    make_splits("iemocap_loso5", data, tmp_path / "s", seed=3)
    assert json.loads((tmp_path / "s" / "split.json").read_text())["seed"] == 3
    (tmp_path / "s" / MARKER).unlink()
    (tmp_path / "s" / "fold1" / "notes.txt").write_text("mine")
    with pytest.raises(SerkitError, match="it holds fold1/notes.txt"):
        make_splits("iemocap_loso5", data, tmp_path / "s")
    assert (tmp_path / "s" / "fold1" / "notes.txt").read_text() == "mine"


def test_meld_output_written_before_markers_is_reused_safely(meld_release, tmp_path, monkeypatch):
    out = prepare_meld(meld_release, tmp_path / "d")
    for p in (out / MARKER, out / "wavs" / MARKER, out / "wavs" / "sources.json"):
        p.unlink()  # an earlier version wrote neither markers nor source records
    decoded = []
    real = audio.decode_av
    monkeypatch.setattr(audio, "decode_av", lambda p, *a: decoded.append(Path(p).name) or real(p, *a))
    prepare_meld(meld_release, out)
    assert len(decoded) == 7  # every clip there is decoded again: no record proves where a wav came from
    assert datadir.load(out).meta["extraction"]["reused_wavs"] == 0
    prepare_meld(meld_release, out)
    assert len(decoded) == 7 + 2  # now recorded: only the silent and the broken clip are tried again
