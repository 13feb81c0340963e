"""Files the pack reads and writes: model folders, confined reads, atomic and numbered saves, checked loads.

Every save goes through a hidden temporary file in the target folder that is renamed into place, so a failed or
cancelled save leaves nothing. A pair of files is renamed only once both are written, and rolled back together.
Saves are numbered (``name_00001_...``) like core's SaveImage, so nothing is overwritten. Reads of user-named
files are confined to ComfyUI's input, output and temp folders; safetensors loads name the input on any defect.
"""

from __future__ import annotations

import os
import re
import uuid

import folder_paths
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file


def register_model_folder(name: str, extensions: set[str]) -> None:
    """Make ``models/<name>/`` a ComfyUI model folder (listed in combos, found by get_full_path)."""
    if name not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[name] = ([os.path.join(folder_paths.models_dir, name)], set(extensions))


def model_folder(name: str) -> str:
    """The first folder registered for ``name``: where saves go."""
    return folder_paths.get_folder_paths(name)[0]


# ----- reads confined to ComfyUI's folders ---------------------------------------------------------------------------

def readable_roots() -> list[str]:
    """The folders user-named files may be read from: ComfyUI's input, output and temp folders (symlinks resolved)."""
    roots = (folder_paths.get_input_directory(), folder_paths.get_output_directory(), folder_paths.get_temp_directory())
    return [os.path.realpath(root) for root in roots]


def confined_path(path: str) -> str | None:
    """``path`` with symlinks and ``..`` resolved, if it lies inside a readable root; else None."""
    real = os.path.realpath(path)
    for root in readable_roots():
        if os.path.commonpath([root, real]) == root and real != root:
            return real
    return None


# ----- saves ---------------------------------------------------------------------------------------------------------

def temp_path_beside(target: str) -> str:
    """A hidden, unique temporary path in ``target``'s folder, keeping its extension (encoders read it)."""
    folder, name = os.path.split(target)
    stem, ext = os.path.splitext(name)
    return os.path.join(folder, f".{stem}.{uuid.uuid4().hex[:8]}.tmp{ext}")


def remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def not_writable(folder: str, what: str, error: OSError | None = None) -> PermissionError:
    """The error for a save whose folder cannot be written: names the folder, the cause and the fix."""
    cause = f" ({error.strerror or error})" if error is not None else ""
    return PermissionError(f"{what}: cannot write into the folder {folder}{cause}. Make it a writable folder for the "
                           "user running ComfyUI, or save somewhere else (another filename prefix or output folder).")


def prepare_folder(folder: str, what: str) -> None:
    """Create ``folder`` and check that files can be written there; PermissionError naming the folder and the fix."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise not_writable(folder, what, error) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise not_writable(folder, what)


def numbered_paths(stem: str, places: list[tuple[str, str]]) -> list[str]:
    """``folder/stem_NNNNN_suffix`` for each ``(folder, suffix)``, all under one number: the first past every
    numbered ``stem`` file in those folders at which none of the paths exists (core SaveImage's numbering)."""
    pattern = re.compile(re.escape(stem) + r"_(\d{5})_")
    taken = []
    for folder in {folder for folder, _ in places}:
        try:
            taken += [int(m.group(1)) for name in os.listdir(folder) if (m := pattern.match(name))]
        except OSError:  # a folder that does not exist yet holds no numbers
            pass
    counter = max(taken, default=0) + 1
    while True:
        paths = [os.path.join(folder, f"{stem}_{counter:05}_{suffix}") for folder, suffix in places]
        if not any(os.path.exists(path) for path in paths):
            return paths
        counter += 1


def save_safetensors_group(files: list[tuple[dict, dict, str]], what: str) -> None:
    """Write each ``(tensors, metadata, path)`` atomically, all or none: every file is written to a temporary
    beside its target first; only then are they renamed into place, and a failure removes what was renamed."""
    staged: list[tuple[str, str]] = []
    placed: list[str] = []
    try:
        for tensors, metadata, path in files:
            prepare_folder(os.path.dirname(path), what)
            if os.path.exists(path):
                raise FileExistsError(f"{what}: {path} already exists; it is not overwritten.")
            tmp = temp_path_beside(path)
            staged.append((tmp, path))
            try:
                save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
            except OSError as error:
                raise not_writable(os.path.dirname(path), what, error) from None
        for tmp, path in staged:
            os.replace(tmp, path)
            placed.append(path)
    except BaseException:
        for path in placed:
            remove_quietly(path)
        for tmp, _ in staged:
            remove_quietly(tmp)
        raise


# ----- checked loads -------------------------------------------------------------------------------------------------

def read_safetensors(path: str, input_name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; ValueError naming ``input_name`` and the file when it is not
    a readable safetensors file or holds NaN / Inf (which would turn every edit into NaN)."""
    name = os.path.basename(path)
    if not path.endswith(".safetensors"):
        raise ValueError(f"{input_name}: {name} is not a .safetensors file; pickled files (.pt/.ckpt/.pth/.bin) can "
                         "run arbitrary code when loaded, so they are refused. Convert it to .safetensors first.")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{input_name}: {name} could not be read as safetensors ({error}); the file is truncated or "
                         "corrupt. Save it again, or pick another file.") from None
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"{input_name}: {name} holds NaN or Inf values (in {key}); the training that wrote it "
                             "diverged. Train again with a lower learning rate, or pick another file.")
    return tensors, metadata
