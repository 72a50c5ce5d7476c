"""What the documentation points at exists: every link between the Markdown pages, every
section a config header, the Makefile or a docstring names, every module in docs/layout.md,
and every config group and training key in the README's configuration table. Pages move
and sections get renamed; a pointer nobody follows any more is found here, not by a user.
And the notebook example of docs/core.md runs as written."""

import re
from pathlib import Path

from omegaconf import OmegaConf

from mnist.paths import REPO_ROOT
from tests.helpers import CONF_DIR, compose_config, write_synthetic_mnist

PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
# Where the code and configs point a reader at the documentation.
POINTING = [
    REPO_ROOT / "Makefile",
    *sorted(CONF_DIR.rglob("*.yaml")),
    *sorted((REPO_ROOT / "mnist").rglob("*.py")),
    *sorted((REPO_ROOT / "scripts").glob("*.py")),
]
# docs/tuning.md#pruning, README.md#configuration, or docs/results.md, Top accuracy.
POINTER = re.compile(r"\b((?:docs/[\w-]+|README)\.md)(?:#([\w-]+)|, ([A-Z][\w ]*\w))?")
LINK = re.compile(r"\]\(([^)\s#]*)(?:#([^)\s]+))?\)")
# The keys of the training config the README's table names, besides every config group.
TABLED = ("trainer", "data", "logger", "paths", "sweep", "seed")


def headings(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # a code block's comments
    return re.findall(r"^#{1,6} (.+)$", text, flags=re.M)


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but - and _ left out, spaces
    as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def broken(page: Path, fragment: str | None, section: str | None = None) -> str | None:
    """What is wrong with a pointer to `page` (#fragment, or a section's first words)."""
    if not page.is_file():
        return "no such page"
    titles = headings(page)
    if fragment and fragment not in map(anchor, titles):
        return f"no section #{fragment}"
    if section and not any(t.lower().startswith(section.lower()) for t in titles):
        return f"no section {section!r}"
    return None


def test_every_link_between_the_pages_leads_to_a_page_and_section_that_exist():
    problems = []
    for page in PAGES:
        for target, fragment in LINK.findall(page.read_text()):
            if "://" in target or not (target.endswith(".md") or (not target and fragment)):
                continue
            found = (page.parent / target).resolve() if target else page
            if problem := broken(found, fragment):
                problems.append(f"{page.relative_to(REPO_ROOT)}: ({target}#{fragment}) {problem}")
    assert problems == []


def test_every_pointer_from_the_code_and_configs_names_a_section_that_exists():
    problems = []
    for source in POINTING:
        text = source.read_text()
        where = source.relative_to(REPO_ROOT)
        # A bare "README" (or "the README's Performance section") cannot be checked.
        problems += [f"{where}: README without .md#<section>"
                     for m in re.finditer(r"README(?!\.md#)", text)]  # fmt: skip
        for path, fragment, section in POINTER.findall(text):
            if problem := broken(REPO_ROOT / path, fragment, section):
                problems.append(f"{where}: {path} {fragment or section}: {problem}")
    assert problems == []


def test_the_layout_page_names_every_module_but_the_models():
    """A model's module needs no line of its own (a user adds one in two files): the page
    names the model classes as a whole."""
    layout = (REPO_ROOT / "docs" / "layout.md").read_text()
    models = {
        REPO_ROOT / f"{OmegaConf.load(config)._target_.rpartition('.')[0].replace('.', '/')}.py"
        for config in (CONF_DIR / "model").glob("*.yaml")
    }
    modules = sorted(set((REPO_ROOT / "mnist").rglob("*.py")) - models)
    missing = [
        str(m.relative_to(REPO_ROOT)) for m in modules
        if m.name != "__init__.py" and not re.search(rf"\b{re.escape(m.name)}\b", layout)
    ]  # fmt: skip
    assert missing == []


def test_the_readme_configuration_table_names_every_group_and_training_key():
    readme = (REPO_ROOT / "README.md").read_text()
    table = readme[readme.index("## Configuration") : readme.index("### The models")]
    rows = {row.split("|")[1].strip(): row for row in table.splitlines() if row.startswith("| `")}
    options = {p.parent.relative_to(CONF_DIR).as_posix() for p in CONF_DIR.glob("*/**/*.yaml")}
    groups = {o if o.startswith("hydra/") else o.split("/")[0] for o in options}
    named = {re.match(r"`([^`]+)`", cell)[1] for cell in rows}
    assert groups - named == set()
    cfg = compose_config([])
    row_of = {"data": "dataset"}
    missing = []
    for top in TABLED:
        keys = list(cfg[top]) if hasattr(cfg[top], "keys") else [None]
        for key in keys:
            dotted = f"{top}.{key}" if key else top
            row = next(
                (r for c, r in rows.items() if c.startswith(f"`{row_of.get(top, top)}`")), ""
            )
            if f"`{dotted}`" not in table and not (key and re.search(rf"`{key}\b", row)):
                missing.append(dotted)
    assert missing == []


def test_the_core_notebook_example_trains_and_tests_a_model(tmp_path, monkeypatch, capsys):
    page = (REPO_ROOT / "docs" / "core.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    # Where the example expects them: the MNIST files (synthetic digits, enough for its
    # 1,000 validation images).
    write_synthetic_mnist(tmp_path / "data" / "MNIST" / "raw", n_train=1600)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/core.md", "exec"), {})
    shown = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in shown[:2]] == ["epoch 1", "epoch 2"]
    assert re.fullmatch(r"best epoch [12]: test accuracy (0|1)\.\d{4}", shown[2])
    assert sorted(p.name for p in (tmp_path / "notebook-run").iterdir()) == ["best.pt", "last.pt"]
