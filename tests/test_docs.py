"""The docs agree with what runs: one apt package list for headless Linux (the CI's)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _apt_packages(text: str) -> list[list[str]]:
    """The package lists of every `apt-get install` command in `text` (continuations joined)."""
    joined = text.replace("\\\n", " ")
    found = []
    for line in joined.splitlines():
        if "apt-get install" in line:
            words = line.split("apt-get install", 1)[1].split(">")[0].split()
            found.append([w for w in words if not w.startswith("-")])
    return found


def test_one_apt_list_for_headless_linux():
    ci = _apt_packages((REPO / ".ci" / "run").read_text())
    assert len(ci) == 1 and "xvfb" in ci[0]
    for doc in ("README.md", "docs/user-guide.md"):
        lists = _apt_packages((REPO / doc).read_text())
        assert lists, doc
        for packages in lists:
            assert packages == ci[0], doc


@pytest.mark.parametrize("doc", ["README.md", "docs/user-guide.md", "docs/reproduce.md"])
def test_documented_options_exist(doc):
    """Every `--option` a doc shows for train or evaluate is one the parser knows."""
    from napari_allbag.cli.main import build_parser

    choices = build_parser()._subparsers._group_actions[0].choices
    known = {o for name in ("train", "evaluate") for o in choices[name]._option_string_actions}
    text = (REPO / doc).read_text()
    for command in re.findall(r"napari-allbag (?:train|evaluate)[^\n]*(?:\\\n[^\n]*)*", text):
        for option in re.findall(r"(?<![\w-])--[a-z][a-z-]+", command):
            assert option in known, f"{doc}: {option}"


def test_user_guide_names_every_option():
    """Every `--option` of every subcommand is named in the user guide (new options get documented)."""
    from napari_allbag.cli.main import build_parser

    choices = build_parser()._subparsers._group_actions[0].choices
    named = set(
        re.findall(r"(?<![\w-])--[a-z][a-z-]*(?![\w-])", (REPO / "docs/user-guide.md").read_text())
    )
    missing = [
        f"{name} {option}"
        for name, parser in choices.items()
        for option in parser._option_string_actions
        if option.startswith("--") and option != "--help" and option not in named
    ]
    assert choices and not missing, missing


def test_architecture_lists_every_module():
    """Every module of the package has a row in docs/architecture.md's table (or its `pkg.*` row)."""
    text = (REPO / "docs" / "architecture.md").read_text()
    rows = set(re.findall(r"^\| `([a-z0-9_.*]+)` \|", text, re.M))
    package = REPO / "src" / "napari_allbag"
    modules = [
        ".".join(path.relative_to(package).with_suffix("").parts)
        for path in sorted(package.rglob("*.py"))
        if path.name not in ("__init__.py", "__main__.py")
    ]
    missing = [m for m in modules if m not in rows and f"{m.split('.')[0]}.*" not in rows]
    assert modules and not missing, missing


def _python_examples(section: str) -> list[str]:
    """The ```python blocks of one `## ` section of the user guide."""
    text = (REPO / "docs" / "user-guide.md").read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, re.S)


def test_the_user_guides_python_examples_run(tmp_path, capsys):
    """The 'From Python' examples run as printed, with only their paths pointed at test files."""
    import cv2

    from napari_allbag.data.synthetic_brightfield import BrightfieldLook, make_brightfield_field
    from tests.model_factory import make_tiny_bundle

    bundle = make_tiny_bundle(tmp_path / "bundle", seed=3)
    smears = tmp_path / "smears"
    smears.mkdir()
    for seed in (1, 2):
        image, _ = make_brightfield_field(seed, shape=(750, 1000), look=BrightfieldLook(scale=0.5))
        cv2.imwrite(
            str(smears / f"field{seed}.jpg"), image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95]
        )
    places = {
        '"my-bundle"': repr(str(bundle)),
        '"smear.jpg"': repr(str(smears / "field1.jpg")),
        '"smears/"': repr(str(smears)),
    }
    examples = _python_examples("From Python (scripts and notebooks)")
    assert len(examples) == 2
    for code in examples:
        for name, place in places.items():
            code = code.replace(name, place)
        exec(compile(code, "user-guide example", "exec"), {"__name__": "__main__"})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].endswith("cells") and any(line.startswith("1 ") for line in printed)
    assert [line.split()[0] for line in printed if line.startswith("field")] == [
        "field1.jpg",
        "field2.jpg",
    ]
