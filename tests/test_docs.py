"""The documentation site builds with ``mkdocs build --strict``: no broken link, page or cross-reference.

Slow (a full build, 10-20 s) and skipped without the ``docs`` extra; CI (``.ci/run``) runs the same build.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: what ``pip install -e ".[docs]"`` installs (import names)
DOCS_MODULES = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python", "mkdocs_include_markdown_plugin")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for module in DOCS_MODULES:
        pytest.importorskip(module, reason='the docs extra: pip install -e ".[docs]"')
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml")]
    proc = subprocess.run(
        [*command, "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def test_strict_build_writes_every_page(site: Path) -> None:
    pages = ["index", "toys", "overparam_study", "overparam/summary", "benchmarks", "distributed", "security"]
    pages += ["changelog", "api", "api/core", "api/transforms", "api/models", "api/data", "api/pretrained"]
    for page in pages:
        html = site / "index.html" if page == "index" else site / page / "index.html"
        assert html.is_file(), page
    assert (site / "figures" / "overparam" / "final_nll_vs_width.png").is_file()


def test_readme_links_point_into_the_site(site: Path) -> None:
    """The README links ``docs/toys.md``; included as the home page, that must become ``toys/``."""
    home = (site / "index.html").read_text(encoding="utf-8")
    links = ["toys/", "distributed/", "overparam_study/", "benchmarks/"]
    for target in [f'href="{link}"' for link in links] + ['src="figures/overparam/final_nll_vs_width.png"']:
        assert target in home, target
    assert 'href="docs/' not in home


def test_sphinx_markup_is_rendered(site: Path) -> None:
    """The docstrings' ``:class:`` / ``:math:`` roles become links and math, not literal text."""
    for page in sorted((site / "api").rglob("index.html")):
        text = page.read_text(encoding="utf-8")
        for role in (":class:", ":func:", ":meth:", ":math:", ".. math::"):
            assert role not in text, (page.relative_to(site), role)
    models = (site / "api" / "models" / "index.html").read_text(encoding="utf-8")
    assert 'class="arithmatex"' in models
    assert 'href="../transforms/#unflow_zoo.transforms.ODENet"' in models  # a :class: role, resolved across pages
