"""Every key of every shipped yaml is used, and every override the recipes pass names a key that exists.

After SpeechBrain's tests/consistency/test_yaml.py. A top-level key of a config (plugins/serkit/conf/*.yaml,
recipes/*/conf/*.yaml; fairseq's hydra configs are not HyperPyYAML and are left out) is used when another
key refers to it (``<key>``), the code reads it (``hparams["key"]``, ``.get("key")``, ``hparams.key``,
``getattr(hparams, "key", ...)``), ``serkit train`` fills it in (``num_layers``), SpeechBrain reads it
as a run option (``max_grad_norm``), or HyperPyYAML runs it (``__set_seed``). An overlay (a plain
mapping applied with ``serkit train --overlay``) may only set keys of its base.

The overrides checked: every ``--snake_case`` token in the recipes' shell scripts, every ``--key`` of a
``*overrides=`` string there, and every ``--key`` inside ``--head-overrides "..."``,
``--search-overrides "..."`` or ``--overrides "..."`` in the recipes' READMEs (their fidelity tables'
"how to switch" column included); each must be a key of a config that recipe trains with, a SpeechBrain
run option or a ``serkit train`` option.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import pytest
import yaml

pytest.importorskip("speechbrain")

REPO = Path(__file__).resolve().parents[2]
SHARED = Path("plugins") / "serkit" / "conf"
#: overlay -> the configs it is applied to
OVERLAYS = {
    SHARED / "mfsn_mini.yaml": [SHARED / "mfsn.yaml", Path("recipes/IEMOCAP/conf/mfsn_text.yaml")],
    Path("recipes/IEMOCAP/conf/mfsn_text_mini.yaml"): [Path("recipes/IEMOCAP/conf/mfsn_text.yaml")],
}


class TagIgnoringLoader(yaml.SafeLoader):
    pass


TagIgnoringLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def top_keys(path: Path) -> list[str]:
    return list(yaml.load(path.read_text(encoding="utf-8"), Loader=TagIgnoringLoader) or {})


def configs(root: Path) -> list[Path]:
    """Every shipped HyperPyYAML config, relative to ``root`` (overlays excluded)."""
    found = sorted((root / SHARED).glob("*.yaml")) + sorted(root.glob("recipes/*/conf/*.yaml"))
    return [p.relative_to(root) for p in found if p.relative_to(root) not in OVERLAYS]


def run_options() -> set[str]:
    from speechbrain.core import RunOptions

    return {f.name for f in dataclasses.fields(RunOptions)}


def train_options() -> set[str]:
    from serkit.speechbrain.train import build_parser

    return {a.dest for a in build_parser()._actions}


def unused_keys(root: Path) -> list[str]:
    """``file: key`` for every key of a shipped config that nothing uses."""
    sources = sorted((root / "plugins" / "serkit").rglob("*.py"))
    code = "\n".join(p.read_text(encoding="utf-8") for p in sources)
    from serkit.speechbrain.train import DERIVED_KEYS

    speechbrain = run_options() | set(DERIVED_KEYS)  # serkit train fills the derived keys in
    out = []
    for rel in configs(root):
        text = (root / rel).read_text(encoding="utf-8")
        referenced = set(re.findall(r"<(\w+)", text))
        for key in top_keys(root / rel):
            if key in referenced or key in speechbrain or key.startswith("__"):
                continue
            if re.search(
                rf"""hparams\.{key}\b|\[["']{key}["']\]|\.get\(["']{key}["']|"""
                rf"""getattr\([\w.]+,\s*["']{key}["']""",
                code,
            ):
                continue
            out.append(f"{rel}: {key}")
    return out


def overlay_problems(root: Path) -> list[str]:
    out = []
    for overlay, bases in OVERLAYS.items():
        data = yaml.safe_load((root / overlay).read_text(encoding="utf-8")) or {}
        for base in bases:
            missing = sorted(set(data) - set(top_keys(root / base)))
            if missing:
                out.append(f"{overlay} sets {missing}, which {base} does not have")
    return out


def _scripts(root: Path, recipe: Path) -> list[Path]:
    """A recipe's shell scripts and the template's (local/*.sh), which its run.sh sources."""
    return sorted(recipe.rglob("*.sh")) + sorted((root / "local").glob("*.sh"))


def recipe_configs(root: Path, recipe: Path) -> list[Path]:
    """The configs a recipe's scripts name: its conf/*.yaml and the shared ones ($shared_conf/x.yaml)."""
    scripts = "\n".join(p.read_text(encoding="utf-8") for p in _scripts(root, recipe))
    names = set(re.findall(r"\$shared_conf/(\w+)\.yaml", scripts))
    found = [SHARED / f"{n}.yaml" for n in sorted(names)]
    found += [p.relative_to(root) for p in sorted((recipe / "conf").glob("*.yaml"))]
    return [p for p in found if p not in OVERLAYS]


def _keys(text: str) -> list[str]:
    return re.findall(r"(?<![\w-])--([A-Za-z]\w*)", text)


def override_problems(root: Path) -> list[str]:
    """``where: --key`` for every override a recipe passes that names no key of its configs."""
    allowed_always = run_options() | train_options()
    out = []
    seen = set()  # the template's lines, checked once
    for recipe in sorted(p for p in (root / "recipes").iterdir() if (p / "run.sh").is_file()):
        known = set(allowed_always)
        for conf in recipe_configs(root, recipe):
            if not (root / conf).is_file():
                out.append(f"{recipe.name}: its scripts name {conf}, which does not exist")
                continue
            known |= set(top_keys(root / conf))
        for script in _scripts(root, recipe):
            for n, line in enumerate(script.read_text(encoding="utf-8").splitlines(), 1):
                if (script, n) in seen:
                    continue
                seen.add((script, n))
                code = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
                keys = {k for k in _keys(code) if "_" in k}
                for m in re.finditer(r"\w*overrides=[^\n]*?\"([^\"]*)\"", code):
                    keys |= set(_keys(m.group(1)))
                out += [f"{script.relative_to(root)}:{n}: --{k}" for k in sorted(keys - known)]
        readme = recipe / "README.md"
        if readme.is_file():
            for n, line in enumerate(readme.read_text(encoding="utf-8").splitlines(), 1):
                for m in re.finditer(r"--(?:head-|search-)?overrides \"([^\"]*)\"", line):
                    out += [
                        f"{readme.relative_to(root)}:{n}: --{k}" for k in _keys(m.group(1)) if k not in known
                    ]
                for m in re.finditer(r"serkit train [^`|]*", line):
                    out += [
                        f"{readme.relative_to(root)}:{n}: --{k}"
                        for k in _keys(m.group(0))
                        if "_" in k and k not in known
                    ]
    return out


def test_every_key_of_every_shipped_yaml_is_used():
    assert configs(REPO), "no configs found"
    assert unused_keys(REPO) == []


def test_every_overlay_sets_only_keys_of_its_configs():
    assert overlay_problems(REPO) == []


def test_every_override_the_recipes_pass_names_a_key():
    assert override_problems(REPO) == []


def test_the_checks_see_the_overrides_they_must():
    """The scan finds the recipes' real overrides (so an empty problem list means something)."""
    iemocap = REPO / "recipes" / "IEMOCAP"
    assert SHARED / "shiftser.yaml" in recipe_configs(REPO, iemocap)
    assert SHARED / "bas_search.yaml" in recipe_configs(REPO, REPO / "recipes" / "MELD")
    text = (iemocap / "README.md").read_text(encoding="utf-8")
    found = [k for m in re.finditer(r"--head-overrides \"([^\"]*)\"", text) for k in _keys(m.group(1))]
    assert {"shift_proportion", "shift_placement", "kernel_size", "positions", "token_mixer"} <= set(found)


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(REPO / SHARED, root / SHARED, symlinks=True)
    shutil.copytree(REPO / "local", root / "local")
    shutil.copytree(
        REPO / "plugins" / "serkit",
        root / "plugins" / "serkit",
        symlinks=True,
        ignore=shutil.ignore_patterns("conf", "__pycache__"),
        dirs_exist_ok=True,
    )
    for recipe in ("IEMOCAP", "MELD", "SAVEE"):
        shutil.copytree(
            REPO / "recipes" / recipe,
            root / "recipes" / recipe,
            ignore=shutil.ignore_patterns("exp", "data", "dump", "db"),
        )
    return root


def test_a_planted_unused_key_fails(tmp_path):
    root = _copy(tmp_path)
    assert unused_keys(root) == []
    conf = root / SHARED / "shiftser.yaml"
    conf.write_text(conf.read_text(encoding="utf-8") + "dropout_ratio: 0.1\n", encoding="utf-8")
    flea = root / SHARED / "flea.yaml"
    flea.write_text(
        flea.read_text(encoding="utf-8").replace("\nlr: ", "\nlearning_rate: 0.1\nlr: "), encoding="utf-8"
    )
    assert unused_keys(root) == [
        f"{SHARED}/flea.yaml: learning_rate",
        f"{SHARED}/shiftser.yaml: dropout_ratio",
    ]


def test_a_misspelled_override_or_overlay_key_fails(tmp_path):
    root = _copy(tmp_path)
    assert override_problems(root) == [] and overlay_problems(root) == []
    readme = root / "recipes" / "IEMOCAP" / "README.md"
    text = readme.read_text(encoding="utf-8")
    readme.write_text(
        text.replace('"--shift_proportion 0.125"', '"--shift_proportoin 0.125"', 1), encoding="utf-8"
    )
    run = root / "local" / "ser.sh"
    run.write_text(
        run.read_text(encoding="utf-8").replace("--transformer_layers", "--transformer_layer", 1),
        encoding="utf-8",
    )
    search = root / "local" / "ser.sh"
    text = search.read_text(encoding="utf-8")
    default = 'search_overrides=${search_overrides:-"--arch_lr 0.5'
    assert text.count(default) == 1
    search.write_text(
        text.replace(default, default.replace("arch_lr", "arch_learning_rate")), encoding="utf-8"
    )
    mini = root / SHARED / "mfsn_mini.yaml"
    mini.write_text(mini.read_text(encoding="utf-8") + "fusion_width: 8\n", encoding="utf-8")
    found = override_problems(root)
    assert [f.split(":")[0] + ":" + f.split(": ")[-1] for f in found] == [
        "local/ser.sh:--arch_learning_rate",
        "local/ser.sh:--transformer_layer",
        "recipes/IEMOCAP/README.md:--shift_proportoin",
    ], found
    assert overlay_problems(root) == [
        f"{SHARED}/mfsn_mini.yaml sets ['fusion_width'], which {SHARED}/mfsn.yaml does not have",
        f"{SHARED}/mfsn_mini.yaml sets ['fusion_width'], which "
        "recipes/IEMOCAP/conf/mfsn_text.yaml does not have",
    ]
