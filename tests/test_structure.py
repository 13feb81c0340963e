"""The layout rules of the pack, read from the source with ast (nothing is imported): node modules in nodes/ import
the shared machinery in nodes/shared/ and the kernels, never each other; shared modules never import a node
module; kernels never import ComfyUI or the nodes, nor name a node in a message; every node class is named as its
node id without ``VE_``."""

import ast
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
NODES = REPO_ROOT / "nodes"
NODE_MODULES = sorted(p for p in NODES.glob("*.py") if p.name != "__init__.py")
SHARED_MODULES = sorted((NODES / "shared").glob("*.py"))


def pack_imports(path: Path) -> set[str]:
    """The pack's modules that ``path`` imports, as paths from the repository root without ``.py`` ("nodes/shared/
    files", "kernels/lora"); ``from . import a, b`` counts each name."""
    package = path.parent.relative_to(REPO_ROOT).parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)]
            parts = (*base, *node.module.split(".")) if node.module else base
            found |= {"/".join(parts)} if node.module else {"/".join((*parts, a.name)) for a in node.names}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            found |= {"/".join(n.split(".")[1:]) for n in names if n and n.split(".")[0] == "video_edit"}
    return found


def test_node_modules_import_only_shared_modules_and_kernels():
    for path in NODE_MODULES:
        for target in pack_imports(path):
            assert target.startswith(("nodes/shared/", "kernels/")), f"{path.name} imports {target}"


def test_shared_modules_never_import_node_modules():
    for path in SHARED_MODULES:
        for target in pack_imports(path):
            assert target.startswith(("nodes/shared/", "kernels/")), f"shared/{path.name} imports {target}"


def test_kernels_import_neither_comfyui_nor_the_nodes():
    for path in sorted((REPO_ROOT / "kernels").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith(("comfy", "nodes")) and node.level <= 1, path.name
            elif isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] in ("comfy", "comfy_api", "folder_paths") for a in node.names)


def test_the_rule_sees_an_import_between_node_modules(tmp_path, monkeypatch):
    fake = NODES / "fake.py"  # never written: the parse reads the text given through the patched read_text
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None: "from .tokenflow import TokenFlow\n"
                        "from .shared.files import check_name\nfrom . import inversion\n")
    assert pack_imports(fake) == {"nodes/tokenflow", "nodes/shared/files", "nodes/inversion"}


def node_classes(path: Path):
    """(class name, node id) of each class in ``path`` whose schema names a ``node_id``."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ClassDef):
            ids = [kw.value.value for call in ast.walk(node) if isinstance(call, ast.Call)
                   for kw in call.keywords if kw.arg == "node_id" and isinstance(kw.value, ast.Constant)]
            if ids:
                yield node.name, ids[0]


def test_node_classes_are_named_as_their_node_id_without_the_prefix():
    pairs = [pair for path in NODE_MODULES for pair in node_classes(path)]
    assert len(pairs) >= 20
    for name, node_id in pairs:
        assert node_id.startswith("VE_") and name == node_id.removeprefix("VE_"), (name, node_id)


def test_every_package_folder_is_packaged():
    packages = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    folders = {".".join(("video_edit", *p.parent.relative_to(REPO_ROOT).parts))
               for p in REPO_ROOT.glob("*/**/__init__.py") if p.parts[len(REPO_ROOT.parts)] in ("nodes", "kernels")}
    assert folders | {"video_edit"} == set(packages)


def test_kernels_name_no_node():
    """Kernels raise errors about their own parameters; the node that calls them names itself and its inputs."""
    import re

    for path in sorted((REPO_ROOT / "kernels").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not re.search(r"\bVE[ _][A-Z]", node.value), f"{path.name}: {node.value!r}"
