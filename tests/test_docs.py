"""The README and the docs site: every Python snippet runs as written, every link resolves, the site builds
strictly (``mkdocs build --strict``: a broken link, anchor or API reference fails it)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


def run_page(page: Path) -> dict:
    """A page's snippets in order, in one namespace, as a reader would paste them."""
    namespace: dict = {"__name__": "__docs__"}
    for block in python_blocks(page):
        exec(compile(block, str(page.relative_to(ROOT)), "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory) -> list[dict]:
    """The README's two examples, each in its own namespace (both start with their imports)."""
    blocks = python_blocks(README)
    assert len(blocks) == 2, "the README's examples changed: update this test"
    out = []
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, "README.md", "exec"), namespace)
        out.append(namespace)
    return out


def test_readme_classification_example(readme_run):
    ns = readme_run[0]
    assert float(ns["probs"].mean(0).argmax(-1).eq(ns["y"]).float().mean()) > 0.8


def test_readme_regression_example(readme_run):
    ns = readme_run[1]
    pred = ns["pred"]
    assert type(pred).__name__ == "RegressionPredictive" and pred.mean.shape == (9, 1)
    assert ns["method"].likelihood.sigma != 1.0  # σ was trained
    for value in (pred.mean, pred.aleatoric_var, pred.epistemic_var):
        assert torch.isfinite(value).all()
    assert (pred.epistemic_var > 0).all() and (pred.aleatoric_var > 0).all()


def test_regression_page_shows_the_readme_example():
    """docs/regression.md repeats the README's example verbatim (so one run tests both)."""
    assert python_blocks(DOCS / "regression.md") == python_blocks(README)[1:]


def test_classification_page_runs(tmp_path, monkeypatch, capsys):
    from test_data import make_fake_mnist

    import bbh.posteriors.sizing as sizing

    monkeypatch.chdir(tmp_path)  # the checkpoint example writes runs/my-bbh; the data example reads ./DATA
    make_fake_mnist(tmp_path / "DATA", n_test=6, n_outliers=5)
    # "Large networks" prints what a 16 GB machine would, whatever this one has
    monkeypatch.setattr(sizing, "available_memory", lambda device="cpu": 16 * 2**30)
    ns = run_page(DOCS / "classification.md")
    printed = capsys.readouterr().out
    assert ns["terms"].outputs.shape[-1] == 4  # the plain torch loop ran on the page's own loader
    assert (tmp_path / "runs" / "my-bbh" / "checkpoint.pt").is_file()
    assert ns["results"].test.n == 6 and ns["results"].ood["notmnist"].metrics.n == 5  # bbh.data.load
    assert ns["method"].layout.value == "rank1" and str(ns["method"].size) in printed
    assert "5,741,747,220 parameters" in printed and "91.87 GB to train with Adam — more than" in printed


@pytest.mark.parametrize("page", ["design.md", "threads.md"])
def test_other_pages_snippets_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert python_blocks(DOCS / page), f"{page} has no Python snippet: drop it from this test"
    run_page(DOCS / page)


def test_every_page_with_python_is_tested():
    tested = {"classification.md", "regression.md", "design.md", "threads.md"}
    with_python = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md") if python_blocks(p)}
    assert with_python == tested


def test_readme_links_resolve():
    text = README.read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [link.split("#")[0] for link in links if not re.match(r"[a-z]+://", link)]
    assert local, "the README links to no page"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f"README links to missing files: {missing}"
    assert len(text) <= 12_000, f"the README has {len(text)} characters; the bar is 12,000"


def test_docs_site_builds_strictly(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    api = (tmp_path / "api" / "index.html").read_text()
    for name in ("bbh.create", "bbh.Trainer", "bbh.evaluate", "bbh.data.load"):
        assert name in api, f"the API reference lacks {name}"
