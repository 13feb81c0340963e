"""What the Comfy Registry and ComfyUI-Manager read: static dependencies (one list, two files), the icon, and a
package that leaves development files out (`comfy node pack` honours .comfyignore); the pinned test environment,
and no clash between the pack's folders and installed packages."""

import importlib.util
import re
import sys
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_dependencies_are_static_and_match_requirements_txt():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert "dependencies" not in project.get("dynamic", [])  # comfy-cli reads dynamic dependencies as none
    requirements = [line.strip() for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
    assert project["dependencies"] == requirements
    assert not any(d.split(">")[0].split("=")[0].strip().lower().startswith("torch") for d in requirements)


def test_registry_metadata_has_an_icon_that_ships():
    comfy = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["comfy"]
    assert comfy["Icon"].endswith("/main/docs/icon.png") and (REPO_ROOT / "docs" / "icon.png").is_file()
    assert comfy["PublisherId"] and comfy["DisplayName"]


def test_the_published_package_leaves_development_files_out():
    ignored = {line.strip() for line in (REPO_ROOT / ".comfyignore").read_text().splitlines()}
    assert {"tests/", "tools/", ".ci/", ".cache/", ".comfyui/", ".venv/"} <= ignored


def test_the_repository_root_is_not_on_the_test_path():
    """``python -m pytest`` puts the root on sys.path, where the pack's kernels/ folder shadows the registry package
    ``kernels`` that transformers imports (collection failed on a clean clone): .ci/run uses the pytest entry
    point, and the pack imports its own modules relatively or as ``video_edit``."""
    assert REPO_ROOT not in {Path(entry or ".").resolve() for entry in sys.path}
    spec = importlib.util.find_spec("kernels")
    locations = [spec.origin] if spec and spec.origin else list(spec.submodule_search_locations) if spec else []
    assert not any(Path(location).resolve().is_relative_to(REPO_ROOT / "kernels") for location in locations), locations


def test_the_lock_pins_every_package_of_the_test_environment_exactly():
    """tools/setup/requirements-lock.txt: one exact version per package, torch the CPU build's, and the test
    requirements among them (a clean clone installs what CI passed with)."""
    lines = [line for line in (REPO_ROOT / "tools" / "setup" / "requirements-lock.txt").read_text().splitlines()
             if line and not line.startswith("#")]
    pins = dict(line.split("==") for line in lines)
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][A-Za-z0-9.]*", line) for line in lines), lines
    assert len(pins) == len(lines)
    assert pins["torch"] == "2.13.0" and {"pytest", "diffusers", "transformers", "av", "einops"} <= set(pins)
