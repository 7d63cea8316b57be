"""A plain `pip install serkit` (torch only): each command that needs an extra says which, in one line.

The CLI runs in a subprocess whose import system refuses the optional packages (a sys.meta_path
finder raising ModuleNotFoundError), as on a machine where they were never installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sf = pytest.importorskip("soundfile")

ROOT = Path(__file__).resolve().parents[2]
RUN_BLOCKED = """
import sys
BLOCKED = set(sys.argv[1].split(","))
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Block())
from serkit.cli import main
sys.exit(main(sys.argv[2:]))
"""
OPTIONAL = "speechbrain,hyperpyyaml,fairseq,hydra,omegaconf,faiss,transformers"


def serkit_without(blocked: str, *argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", RUN_BLOCKED, blocked, *argv],
        cwd=cwd or ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_names_extra(proc: subprocess.CompletedProcess, command: str, module: str, extra: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].endswith(
        f"{command} needs {module}, which is not installed; install serkit[{extra}]: "
        f"pip install 'serkit[{extra}]'"
        + (" (or serkit[faiss-gpu] on a CUDA machine)" if extra == "faiss" else "")
    ), lines[0]


@pytest.mark.parametrize(
    "argv, command, module, extra",
    [
        (
            ["train", "x.yaml", "--fold-dir", "f", "--output-folder", "o"],
            "serkit train",
            "speechbrain",
            "speechbrain",
        ),
        (["predict", "--exp", "e", "a.wav"], "serkit predict", "speechbrain", "speechbrain"),
        (
            ["export-upstream", "--exp", "e", "--out", "u.pt"],
            "serkit export-upstream",
            "speechbrain",
            "speechbrain",
        ),
        (["make-upstream", "tiny-hubert", "--out", "t.pt"], "serkit make-upstream", "fairseq", "fairseq"),
        (
            ["dump-features", "--upstream", "model.pt", "--data", "f", "--out", "o"],
            "serkit dump-features",
            "fairseq",
            "fairseq",
        ),
        (
            ["dump-features", "--upstream", ".", "--data", "f", "--out", "o"],
            "serkit dump-features",
            "transformers",
            "hf",
        ),
        (
            ["kmeans", "fit", "--feats", "a", "--fold", "b", "--n-clusters", "2", "--out", "k.npz"],
            "serkit kmeans fit",
            "faiss",
            "faiss",
        ),
    ],
)
def test_command_without_its_extra_names_the_extra(tmp_path, argv, command, module, extra):
    proc = serkit_without(OPTIONAL, *argv, cwd=tmp_path)
    assert_names_extra(proc, command, module, extra)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_partly_installed_extra_is_reported_as_the_extra(tmp_path):
    """fairseq present but omegaconf missing: the import fails inside the command, same one line."""
    proc = serkit_without("omegaconf", "make-upstream", "tiny-hubert", "--out", str(tmp_path / "t.pt"))
    assert_names_extra(proc, "serkit make-upstream", "omegaconf", "fairseq")


def test_help_and_list_work_without_any_extra():
    assert serkit_without(OPTIONAL, "--help").returncode == 0
    proc = serkit_without(OPTIONAL, "list")
    assert proc.returncode == 0, proc.stderr
    assert "  shiftcnn\n" in proc.stdout and "  iemocap_loso5\t" in proc.stdout
    assert "(fairseq is not installed; install serkit[fairseq]" in proc.stdout


def test_kmeans_sklearn_backend_fits_and_applies_without_faiss(tmp_path):
    from serkit.data.manifest import Utterance, write_split
    from serkit.upstream import load_upstream
    from serkit.upstream.features import collect_inputs, dump_features

    rng = np.random.default_rng(0)
    (tmp_path / "wav").mkdir()
    utts = []
    for i in range(6):
        spk = f"spk{i // 2}"
        wav = tmp_path / "wav" / f"{spk}_u{i}.wav"
        sf.write(wav, (0.1 * rng.standard_normal(4000 + 800 * i)).astype(np.float32), 16000, subtype="FLOAT")
        utts.append(Utterance(f"{spk}_u{i}", str(wav), 4000 + 800 * i, "neu", spk))
    fold = tmp_path / "fold1"
    for split, part in (("train", utts[:2]), ("valid", utts[2:4]), ("test", utts[4:])):
        write_split(fold, split, part, str(tmp_path / "wav"))
    feats = tmp_path / "feats"
    dump_features(load_upstream("mfcc"), collect_inputs([str(fold)]), feats, dtype="float32", progress=False)

    model = tmp_path / "km.npz"
    fit = serkit_without(
        "faiss",
        "kmeans",
        "fit",
        "--feats",
        str(feats),
        "--fold",
        str(fold),
        "--n-clusters",
        "3",
        "--backend",
        "sklearn",
        "--out",
        str(model),
    )
    assert fit.returncode == 0, fit.stderr
    labels = tmp_path / "labels"
    apply = serkit_without(
        "faiss",
        "kmeans",
        "apply",
        "--model",
        str(model),
        "--feats",
        str(feats),
        "--fold",
        str(fold),
        "--splits",
        "train",
        "--out",
        str(labels),
    )
    assert apply.returncode == 0, apply.stderr
    rows = (labels / "train.km").read_text().splitlines()
    assert len(rows) == 2 and all(set(r.split()) <= {"0", "1", "2"} for r in rows)

    # the same labels as faiss' search, where faiss is installed
    faiss = pytest.importorskip("faiss")
    from serkit.cluster.kmeans import load_model
    from serkit.upstream.features import FeatureReader

    centroids = load_model(model)[0]
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(centroids)
    reader = FeatureReader(feats)
    for row, utt in zip(rows, utts[:2]):
        x = np.ascontiguousarray(reader.load(utt.utt, layers=[reader.layers[0]])[0], dtype=np.float32)
        assert row.split() == [str(i) for i in index.search(x, 1)[1][:, 0]]


def test_serkit_nn_needs_torch_only():
    code = """
import sys
BLOCKED = set(sys.argv[1].split(","))
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
import torch
from serkit.nn import HEADS, build_head
for name in sorted(HEADS):
    head = build_head(name, 16, 4).eval()
    print(name, tuple(head(torch.randn(2, 30, 16), torch.zeros(2, 30, dtype=torch.bool)).shape))
"""
    blocked = OPTIONAL + ",sklearn,scipy,soundfile,av,kaldiio,matplotlib,yaml,tqdm"
    proc = subprocess.run(
        [sys.executable, "-c", code, blocked],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"{name} (2, 4)"
        for name in sorted(
            ["bas", "cnn", "ffn", "linear", "lstm", "shiftcnn", "shiftformer", "shiftlstm", "transformer"]
        )
    ]
