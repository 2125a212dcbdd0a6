"""The docs stay true to the code and to the repository: the generated config reference is current, the README is a
front door, and every relative link lands on a file inside the repository."""

from __future__ import annotations

import importlib
import importlib.util
import re
import shutil
import sys
from pathlib import Path

import pytest

from smart_tuner.config import config_keys

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "config_reference.py"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target) and [text]: target; images too. Code spans are removed first (a `[x](y)` there is not a link).
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|^\s*\[[^\]]+\]:\s*(\S+)", re.M)
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)


def _generator():
    spec = importlib.util.spec_from_file_location("config_reference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _links(page: Path) -> list[str]:
    text = CODE.sub("", page.read_text(encoding="utf-8"))
    return [a or b for a, b in LINK.findall(text)]


def test_the_committed_config_reference_is_what_the_generator_writes_now():
    page = ROOT / "docs" / "config.md"
    assert page.read_text(encoding="utf-8") == _generator().render(), (
        "docs/config.md is stale: run `python scripts/config_reference.py` (or `make docs`) and commit it")


def test_the_config_reference_names_every_key_with_its_default():
    page = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    documented = re.findall(r"^- `([a-z_0-9.]+)`: `[^`]+`; default `", page, flags=re.M)
    assert sorted(documented) == sorted(["preset", *config_keys()])
    assert "- `train.lr`: `float`; default `0.001`; > 0." in page
    assert "- `model.r`: `int`; default `1`; demo `4`; >= 1; kept on resume. mel frames emitted per decoder" in page


def test_check_exits_1_on_a_stale_page_and_0_on_a_current_one(tmp_path, capsys):
    generator = _generator()
    current = tmp_path / "config.md"
    current.write_text(generator.render(), encoding="utf-8")
    assert generator.main(["--check", "--out", str(current)]) == 0
    stale = tmp_path / "stale.md"
    stale.write_text(generator.render().replace("default `0.001`", "default `0.002`", 1), encoding="utf-8")
    assert generator.main(["--check", "--out", str(stale)]) == 1
    assert "python scripts/config_reference.py" in capsys.readouterr().err
    assert generator.main(["--check", "--out", str(tmp_path / "missing.md")]) == 1


def test_the_generator_sees_a_changed_default_bound_or_comment(tmp_path, monkeypatch):
    # A copy of the config module as a package of its own, changed the way a developer would change it.
    package = tmp_path / "config_copy"
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    for module in ("errors.py", "seeds.py", "numeric.py", "yaml_reader.py"):  # what config.py imports
        shutil.copy(ROOT / "smart_tuner" / module, package / module)
    source = (ROOT / "smart_tuner" / "config.py").read_text(encoding="utf-8")
    changes = [
        ("lr: float = setting(1e-3, gt=0)", "lr: float = setting(2e-3, gt=0)"),
        ("batch_size: int = setting(16, ge=1)", "batch_size: int = setting(16, ge=2)"),
        ("# mel frames emitted per decoder step", "# frames per decoder step"),
    ]
    for old, new in changes:
        assert source.count(old) == 1, old
        source = source.replace(old, new)
    (package / "config.py").write_text(source, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        changed = _generator().render(importlib.import_module("config_copy.config"))
    finally:
        for name in [n for n in sys.modules if n == "config_copy" or n.startswith("config_copy.")]:
            del sys.modules[name]
    committed = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    assert changed != committed
    assert "- `train.lr`: `float`; default `0.002`; demo `0.001`; tacotron2 `0.001`; > 0." in changed
    assert "- `train.batch_size`: `int`; default `16`; tacotron2 `64`; >= 2." in changed
    assert "kept on resume. frames per decoder step" in changed


def test_the_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines: move detail to a page under docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_line_over_120_characters(page):
    long = [i for i, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1) if len(line) > 120]
    assert not long, f"{page.name}: lines {long} are longer than 120 characters"


def _bad_links(page: Path, root: Path) -> list[str]:
    """Each relative link of ``page`` that leaves ``root`` or names no file there, with why."""
    bad = []
    for target in _links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor on the same page
        path = (page.parent / target.split("#", 1)[0]).resolve()
        if not path.is_relative_to(root):
            bad.append(f"{target} leaves the repository")
        elif not path.is_file():
            bad.append(f"{target} is not a file in the repository")
    return bad


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves_to_a_file_in_the_repository(page):
    assert _bad_links(page, ROOT) == [], page.name


def test_the_link_check_catches_a_link_out_of_the_repository_and_a_missing_file(tmp_path):
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / "README.md").write_text("# here\n", encoding="utf-8")
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "DESIGN.md").write_text("# outside\n", encoding="utf-8")
    page = root / "docs" / "page.md"
    page.write_text("[front](../README.md#here), [design](../../shared/DESIGN.md), [gone](gone.md), "
                    "[web](https://example.org), `[code](not-a-link.md)`\n", encoding="utf-8")
    assert _bad_links(page, root) == ["../../shared/DESIGN.md leaves the repository",
                                      "gone.md is not a file in the repository"]
