"""The documentation cannot rot: the site builds strictly, and the README stays a short front door.

The build runs ``mkdocs build --strict`` (as ``make docs`` does) into a temporary folder: any warning —
a broken link or anchor, a page missing from the nav, an unresolved cross-reference in a docstring,
a docstring that does not match its signature — fails it. A few seconds.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from html import unescape
from pathlib import Path

import pytest

from raycontrast.config import describe_config

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Build the site once for this module: (site folder, build log)."""
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, PYTHONPATH=str(REPO), NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{log}"
    return out, log


def test_site_builds_strictly_without_warnings(site):
    out, log = site
    warnings = [line for line in log.splitlines() if "WARNING" in line]
    assert not warnings, "\n".join(warnings)
    assert (out / "index.html").is_file()
    assert (out / "concepts" / "spec" / "index.html").is_file()


def test_config_reference_lists_every_key_from_the_metadata(site):
    """The generated page holds every key ``raycontrast config --keys`` prints, with its meaning."""
    html = unescape((site[0] / "reference" / "config" / "index.html").read_text())
    for key, _tp, _default, help_text in describe_config():
        assert f"<code>{key}</code>" in html, key
        first_words = " ".join(help_text.split()[:3])
        assert first_words.split("`")[0].split("'")[0] in html, (key, first_words)


API_PAGES = {  # module -> its page under reference/api/
    "raycontrast": "raycontrast",
    "raycontrast.config": "config",
    "raycontrast.contrast": "contrast",
    "raycontrast.bank": "bank",
    "raycontrast.models": "models",
    "raycontrast.data": "data",
    "raycontrast.train": "train",
    "raycontrast.tune": "tune",
    "raycontrast.eval": "eval",
}


@pytest.mark.parametrize("module_name", sorted(API_PAGES))
def test_api_reference_shows_every_exported_name(site, module_name):
    """Each package's page shows every name its ``__all__`` exports, under its public path."""
    import importlib

    module = importlib.import_module(module_name)
    html = (site[0] / "reference" / "api" / API_PAGES[module_name] / "index.html").read_text()
    missing = [n for n in getattr(module, "__all__", ()) if f'id="{module_name}.{n}"' not in html]
    assert not missing, f"{module_name}: not in the API reference: {missing}"


def _slug(heading: str) -> str:
    """The anchor GitHub and MkDocs give a heading (lower case, punctuation dropped, spaces -> -)."""
    text = re.sub(r"[`*_]", "", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {_slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE)}


def test_readme_is_a_front_door_whose_links_resolve():
    text = README.read_text()
    assert len(text.splitlines()) <= 300, f"README.md has {len(text.splitlines())} lines (<= 300)"
    links = LINK.findall(FENCE.sub("", text))
    assert len(links) > 20  # it points into the documentation
    broken = []
    for target in links:
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        file = (README.parent / path) if path else README
        if not file.exists():
            broken.append(f"{target}: no file {file.relative_to(REPO)}")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(REPO)}")
    assert not broken, "\n".join(broken)


def test_nothing_points_outside_the_repository_for_the_specification():
    """The method's specification lives in docs/concepts/spec.md; no file cites ../shared/SPEC.md."""
    offenders = []
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in tracked:  # what a clone holds, not build outputs (site/, *.egg-info)
        path = REPO / name
        parts = set(path.relative_to(REPO).parts)
        if not path.is_file() or path == Path(__file__).resolve():
            continue
        if parts & {"results"}:
            continue
        if path.suffix not in {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ""}:
            continue
        text = path.read_text(errors="ignore")
        if "shared/SPEC.md" in text or re.search(r"(?<![/\w])SPEC\.md", text):
            offenders.append(str(path.relative_to(REPO)))
    assert not offenders, offenders
