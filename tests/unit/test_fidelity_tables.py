"""Every `### Fidelity: <Method>` table in recipes/*/README.md agrees with the code it cites.

Each row's "serkit default" cell is one backticked value followed by its source in backticked
parentheses: a yaml key of the recipe (`conf/x.yaml: dotted.key`) or of a config shared by the corpora
(`x.yaml: dotted.key` or `fairseq/x.yaml: dotted.key`, in plugins/serkit/conf), read as raw YAML
with HyperPyYAML's tags ignored; a run.sh option (`run.sh --opt`, read from its `opt=value` default
line); or a head's default in the head registry (`serkit.nn.heads: head.option`, the value
`build_head("head", ...)` builds it with).
Numbers compare numerically, everything else as the exact string. A row with no checkable source fails.
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COLUMNS = ["setting", "paper", "official code", "serkit default", "how to switch"]
DEFAULT_CELL = re.compile(r"^`(?P<value>[^`]*)`\s*\(`(?P<source>[^`]+)`\)")
YAML_SOURCE = re.compile(r"^(?P<file>[\w./-]+\.ya?ml):\s*(?P<key>[\w.-]+)$")
RUNSH_SOURCE = re.compile(r"^(?P<file>[\w./-]*run\.sh)\s+--(?P<opt>[\w-]+)$")
REGISTRY_SOURCE = re.compile(r"^serkit\.nn\.heads:\s*(?P<head>\w+)\.(?P<option>\w+)$")
SHARED_CONF = Path("plugins") / "serkit" / "conf"


class TagIgnoringLoader(yaml.SafeLoader):
    """SafeLoader that reads HyperPyYAML's tagged nodes (!new:, !name:, !apply:, !ref, !PLACEHOLDER, ...) as
    if they had no tag."""


def _untagged(loader, suffix, node):
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


TagIgnoringLoader.add_multi_constructor("!", _untagged)


def split_row(line: str) -> list[str]:
    """Cells of a markdown table row; a `|` inside backticks or escaped as `\\|` does not split."""
    cells, cell, code = [], "", False
    body = line.strip()
    body = body[1:] if body.startswith("|") else body
    body = body[:-1] if body.endswith("|") and not body.endswith("\\|") else body
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body) and body[i + 1] == "|":
            cell += "|"
            i += 2
            continue
        if ch == "`":
            code = not code
        if ch == "|" and not code:
            cells.append(cell.strip())
            cell = ""
        else:
            cell += ch
        i += 1
    cells.append(cell.strip())
    return cells


def fidelity_rows(readme: Path):
    """Yield (method, line number, line, cells) for every row of every `### Fidelity:` table in ``readme``;
    a malformed table yields a row with cells None and the reason in place of the line."""
    lines = readme.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^###\s+Fidelity:\s*(.+?)\s*$", lines[i])
        i += 1
        if not m:
            continue
        method, start = m.group(1), i
        while i < len(lines) and not lines[i].lstrip().startswith("|") and not lines[i].startswith("#"):
            i += 1
        if i >= len(lines) or not lines[i].lstrip().startswith("|"):
            yield method, start, f"no table after '### Fidelity: {method}'", None
            continue
        header = split_row(lines[i])
        if header != COLUMNS:
            yield method, i + 1, f"header {header} is not {COLUMNS}", None
        i += 2  # header and separator
        found = False
        while i < len(lines) and lines[i].lstrip().startswith("|"):
            found = True
            yield method, i + 1, lines[i], split_row(lines[i])
            i += 1
        if not found:
            yield method, start, f"'### Fidelity: {method}' has a header but no rows", None


def registry_default(head: str, option: str):
    """The value of ``option`` that ``build_head(head, ...)`` gives the head's module when not told: the
    registry's own defaults for the head (``_register_class(name, cls, **defaults)``), else the class's."""
    import inspect

    from serkit.nn import heads

    if head not in heads.HEADS:
        raise LookupError(f"no head {head!r} in the registry ({sorted(heads.HEADS)})")
    captured = inspect.getclosurevars(heads.HEADS[head]).nonlocals
    if "cls" not in captured or "defaults" not in captured:
        raise LookupError(f"head {head!r} is not registered by _register_class: its defaults cannot be read")
    signature = inspect.signature(captured["cls"])
    options = {
        k: p.default for k, p in signature.parameters.items() if p.default is not inspect.Parameter.empty
    }
    options.update(captured["defaults"])
    if option not in options:
        raise LookupError(f"head {head!r} has no option {option!r} ({sorted(options)})")
    return options[option]


def lookup(recipe: Path, source: str):
    """The value ``source`` points at, or raise LookupError saying why it cannot be read."""
    m = REGISTRY_SOURCE.match(source)
    if m:
        return registry_default(m.group("head"), m.group("option"))
    m = YAML_SOURCE.match(source)
    if m:
        # conf/x.yaml: the recipe's own; x.yaml or fairseq/x.yaml: shared by the corpora (plugins/serkit/conf)
        shared = not m.group("file").startswith("conf/")
        path = (recipe.parents[1] / SHARED_CONF if shared else recipe) / m.group("file")
        if not path.is_file():
            raise LookupError(f"{path} does not exist")
        node = yaml.load(path.read_text(encoding="utf-8"), Loader=TagIgnoringLoader)
        for part in m.group("key").split("."):
            if not isinstance(node, dict) or part not in node:
                raise LookupError(f"{path} has no key {m.group('key')!r}")
            node = node[part]
        return node
    m = RUNSH_SOURCE.match(source)
    if m:
        path = recipe / m.group("file")
        if not path.is_file():
            raise LookupError(f"{path} does not exist")
        var = m.group("opt").replace("-", "_")
        for line in path.read_text(encoding="utf-8").splitlines():
            d = re.match(rf"^{re.escape(var)}=(\"[^\"]*\"|'[^']*'|[^\s#]*)", line)
            if d:
                return d.group(1).strip("\"'")
        raise LookupError(f"{path} has no '{var}=' default line")
    raise LookupError(
        f"source {source!r} is neither 'conf/<file>.yaml: key', '<shared>.yaml: key', "
        "'run.sh --option' nor 'serkit.nn.heads: <head>.<option>'"
    )


def _number(value):
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return None


def same(cell: str, value) -> bool:
    """Does the table's backticked ``cell`` state ``value`` (numbers numerically, the rest exactly)?"""
    if isinstance(value, bool):
        return cell in (("True", "true") if value else ("False", "false"))
    if value is None:
        return cell in ("null", "None", "~")
    a, b = _number(cell), _number(value)
    if a is not None and b is not None:
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)
    if isinstance(value, (list, dict)):
        return yaml.safe_load(cell) == value
    return cell == str(value)


def check_row(recipe: Path, cells) -> str | None:
    """None when the row agrees with its source, else what is wrong."""
    if cells is None:
        return "malformed fidelity table"
    if len(cells) != len(COLUMNS):
        return f"{len(cells)} cells, expected {len(COLUMNS)} ({' | '.join(COLUMNS)})"
    m = DEFAULT_CELL.match(cells[3])
    if not m:
        return "'serkit default' is not `value` (`source`): " + cells[3]
    try:
        value = lookup(recipe, m.group("source"))
    except LookupError as e:
        return f"no checkable source: {e}"
    if not same(m.group("value"), value):
        return f"says `{m.group('value')}` but {m.group('source')} is {value!r}"
    return None


def all_rows(root: Path = REPO):
    for readme in sorted(root.glob("recipes/*/README.md")):
        for method, lineno, line, cells in fidelity_rows(readme):
            yield readme, method, lineno, line, cells


ROWS = list(all_rows())


@pytest.mark.parametrize(
    "readme,method,lineno,line,cells", ROWS, ids=[f"{r.parent.name}:{m}:{n}" for r, m, n, _, _ in ROWS]
)
def test_fidelity_row_matches_its_source(readme, method, lineno, line, cells):
    problem = check_row(readme.parent, cells)
    assert problem is None, f"{readme.relative_to(REPO)}:{lineno} ({method}): {problem}\n    {line}"


def test_the_shiftser_table_exists_and_covers_the_official_code_details():
    rows = [(cells, line) for r, m, _, line, cells in ROWS if r.parent.name == "IEMOCAP" and m == "ShiftSER"]
    assert len(rows) >= 30
    sources = {DEFAULT_CELL.match(c[3]).group("source") for c, _ in rows if c and DEFAULT_CELL.match(c[3])}
    for key in (
        "vector_weight_decay",
        "time_mask_fill",
        "warmup_start_lr",
        "final_lr",
        "featex_layers",
        "finetune_optimizer",
        "max_duration",
    ):
        assert f"shiftser.yaml: {key}" in sources, key


def copy_recipe(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(
        REPO / "recipes" / "IEMOCAP",
        root / "recipes" / "IEMOCAP",
        ignore=shutil.ignore_patterns("exp", "data", "dump", "db"),
    )
    shutil.copytree(REPO / SHARED_CONF, root / SHARED_CONF, symlinks=True)
    return root


def problems(root: Path) -> list[str]:
    return [
        f"{r.name}:{n} {check_row(r.parent, c)} :: {line}"
        for r, _, n, line, c in all_rows(root)
        if check_row(r.parent, c) is not None
    ]


def test_a_changed_yaml_value_fails_with_the_readme_line(tmp_path):
    root = copy_recipe(tmp_path)
    assert problems(root) == []
    conf = root / SHARED_CONF / "shiftser.yaml"
    conf.write_text(conf.read_text().replace("weight_decay: 0.05", "weight_decay: 0.01"))
    found = problems(root)
    assert len(found) == 1 and "says `0.05` but shiftser.yaml: weight_decay is 0.01" in found[0]
    assert "| featex weight decay |" in found[0]


def test_a_changed_run_sh_default_or_a_missing_source_fails(tmp_path):
    root = copy_recipe(tmp_path)
    run = root / "recipes" / "IEMOCAP" / "run.sh"
    run.write_text(run.read_text().replace("\nselection=valid ", "\nselection=paper "))
    readme = root / "recipes" / "IEMOCAP" / "README.md"
    text = readme.read_text().replace("(`shiftser.yaml: seed`)", "(`shiftser.yaml: sede`)")
    readme.write_text(text.replace("`32` (`shiftser.yaml: batch_size`)", "`32` (shiftser.yaml)"))
    found = problems(root)
    selection = [p for p in found if "says `valid` but run.sh --selection is 'paper'" in p]
    assert selection and len(found) == 2 + len(selection)  # every table citing --selection notices
    assert any("no checkable source" in p and "has no key 'sede'" in p and "| seed |" in p for p in found)
    assert any("is not `value` (`source`)" in p and "| batch size |" in p for p in found)


def test_values_compare_numerically_and_strings_exactly():
    assert same("5e-7", 5.0e-7) and same("0.0005", "5e-4") and same("100", 100) and not same("0.1", 0.05)
    assert same("True", True) and not same("True", "True ") and same("null", None)
    assert same("start", "start") and not same("Start", "start")
    assert yaml.load(
        "a: !new:x.Y\n    b: !ref <c>\nd: !PLACEHOLDER\ne: !apply:f [1]\n", Loader=TagIgnoringLoader
    ) == {"a": {"b": "<c>"}, "d": "", "e": [1]}
    assert split_row("| a | `x | y` | b\\|c |") == ["a", "`x | y`", "b|c"]


def test_a_head_default_is_read_from_the_registry():
    assert registry_default("shiftcnn", "proportion") == 1 / 16
    assert registry_default("shiftcnn", "kernel_size") == 7 and registry_default("cnn", "shift_blocks") == ()
    assert registry_default("shiftformer", "bidirectional") is True
    assert registry_default("transformer", "shift_placement") == "none"
    assert registry_default("lstm", "proportion") == 0.0
    assert registry_default("shiftlstm", "proportion") == 0.25
    with pytest.raises(LookupError, match="no option 'kernel_size'"):
        registry_default("shiftformer", "kernel_size")


def test_a_changed_registry_default_fails_with_the_readme_line(monkeypatch):
    from serkit.nn import heads

    monkeypatch.delitem(heads.HEADS, "shiftcnn")
    heads._register_class(
        "shiftcnn",
        heads.ConvHead,
        shift_blocks=(1,),
        proportion=1 / 8,
        bidirectional=False,
        placement="residual",
    )
    found = problems(REPO)
    assert len(found) == 1 and "says `0.0625` but serkit.nn.heads: shiftcnn.proportion is 0.125" in found[0]
    assert "| ShiftCNN shift proportion |" in found[0]
