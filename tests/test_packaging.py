"""What the Comfy Registry and ComfyUI-Manager read: static dependencies (one list, two files), the icon, and a
package that leaves development files out (`comfy node pack` honours .comfyignore)."""

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
