"""Files the pack reads and writes: model folders, confined reads, checked names, atomic and numbered saves,
checked loads.

Every save writes hidden temporary files (``.ve_<hex>.partial``: no ComfyUI folder lists that suffix) beside its
targets and renames them into place only once all are written, rolling back together on failure. A journal in
ComfyUI's user folder (``user/__video_edit_saves``) names the files of each save in progress; the saves of a
process that died (``kill -9``, power loss) are rolled back at start-up and before each save, so a crash leaves
neither temporary files nor half a pair. Saves are numbered (``name_00001_...``) like core's SaveImage and
never replace a file. Names are checked to be valid on Windows, macOS and Linux before any file is created.
Reads of user-named files are confined to ComfyUI's input, output and temp folders; safetensors loads name the
input on any defect.
"""

from __future__ import annotations

import json
import ntpath
import os
import re
import uuid
from typing import Callable

import folder_paths
import psutil
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from . import comfy_internals

PARTIAL_SUFFIX = ".partial"  # no ComfyUI folder filter accepts it, so no loader lists a save in progress
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
PICKLE_EXTENSIONS = (".pt", ".ckpt", ".pth", ".bin")


def register_model_folder(name: str, extensions: set[str]) -> None:
    """Make ``models/<name>/`` a ComfyUI model folder (listed in combos, found by get_full_path)."""
    comfy_internals.register_model_folder(name, extensions)


def model_folder(name: str) -> str:
    """The first folder registered for ``name``: where saves go."""
    return folder_paths.get_folder_paths(name)[0]


# ----- reads confined to ComfyUI's folders ---------------------------------------------------------------------------

def readable_roots() -> list[str]:
    """The folders user-named files may be read from: ComfyUI's input, output and temp folders (symlinks resolved)."""
    roots = (folder_paths.get_input_directory(), folder_paths.get_output_directory(), folder_paths.get_temp_directory())
    return [os.path.realpath(root) for root in roots]


def confined_path(path: str, roots: list[str] | None = None, pathmod=os.path) -> str | None:
    """``path`` with symlinks and ``..`` resolved, if it lies inside one of ``roots`` (default: the readable
    roots); else None. ``pathmod`` is the path flavour (``ntpath`` gives Windows' rules on any system: drive
    letters, both slashes, UNC paths, case-insensitive names)."""
    if "\0" in path:
        return None
    real = pathmod.realpath(path)
    for root in (readable_roots() if roots is None else roots):
        root = pathmod.realpath(root)
        folded_root, folded = pathmod.normcase(root), pathmod.normcase(real)
        try:
            inside = pathmod.commonpath([folded_root, folded]) == folded_root
        except ValueError:  # different drives, or one path relative
            continue
        if inside and folded != folded_root:
            return real
    return None


# ----- names valid everywhere ----------------------------------------------------------------------------------------

WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"{port}{i}" for port in ("COM", "LPT") for i in range(1, 10))}
WINDOWS_FORBIDDEN = set('<>:"/\\|?*')
MAX_NAME_BYTES = 255  # the longest file name (UTF-8 bytes on Linux / macOS, UTF-16 units on Windows)


def name_problem(name: str) -> str | None:
    """Why ``name`` (one path component) is not a file name valid on every system, or None."""
    if not name:
        return "is empty"
    bad = sorted({c for c in name if c in WINDOWS_FORBIDDEN or ord(c) < 32})
    if bad:
        return f"holds {' '.join(repr(c) for c in bad)}, which file names may not hold (Windows)"
    if name[-1] in ". ":
        return "ends with a dot or a space, which Windows drops"
    if name.split(".")[0].rstrip(" ").upper() in WINDOWS_RESERVED:
        return "is a device name that Windows reserves (CON, PRN, AUX, NUL, COM1-9, LPT1-9)"
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        return f"is {len(name.encode('utf-8'))} bytes long, over the {MAX_NAME_BYTES} a file name may have"
    return None


def check_name(name: str, input_name: str, what: str) -> None:
    """ValueError naming ``input_name`` and the fix when ``name`` is not a file name valid everywhere."""
    problem = name_problem(name)
    if problem:
        shown = name if len(name) <= 60 else name[:40] + "..." + name[-12:]
        raise ValueError(f"{what}: {input_name} gives the file name {shown!r}, which {problem}. Use another name "
                         "(letters, digits, '-' and '_' are valid everywhere; '/' separates subfolders where the node "
                         "allows them).")


def file_stem(filename: str, default: str, input_name: str, what: str, extension: str = "") -> str:
    """The file-name part of ``filename`` (any folder, ``/`` or ``\\``, dropped; ``extension`` removed), or
    ``default`` when empty; checked to be a valid name."""
    stem = ntpath.basename(filename.strip()).removesuffix(extension) or default
    check_name(stem, input_name, what)
    return stem


# ----- saves ---------------------------------------------------------------------------------------------------------

def temp_path_beside(target: str) -> str:
    """A hidden, unique temporary path in ``target``'s folder: short (names near the length limit still save) and
    ending in ``.partial``, which no ComfyUI folder lists."""
    return os.path.join(os.path.dirname(target), f".ve_{uuid.uuid4().hex[:16]}{PARTIAL_SUFFIX}")


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


def write_failed(target: str, what: str, error: Exception) -> OSError:
    """The error for a save that failed while writing (disk full, file too large, ...): one line naming the file,
    its folder, the cause and the fix."""
    cause = getattr(error, "strerror", None) or str(error).splitlines()[0]
    folder, name = os.path.split(target)
    return OSError(f"{what}: could not write {name} into the folder {folder} ({cause}); nothing was saved. Free "
                   "space there (or save somewhere else), then run again.")


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


def journal_folder() -> str:
    """Where each save in progress is journalled: a system user folder of ComfyUI's (no model list reads it, and
    ComfyUI serves it to no one)."""
    return folder_paths.get_system_user_directory("video_edit_saves")


def this_process() -> tuple[int, float]:
    """(pid, start time): a process's identity, even once its pid is reused."""
    return os.getpid(), psutil.Process().create_time()


def process_alive(pid: int, started: float) -> bool:
    try:
        return psutil.Process(pid).create_time() == started
    except psutil.Error:
        return False


def recover_unfinished_saves() -> list[str]:
    """Roll back the saves whose process died mid-way: remove their temporary files and whatever of theirs was
    already renamed into place (a save is whole or absent). Returns the paths removed."""
    removed = []
    try:
        journals = [name for name in os.listdir(journal_folder()) if name.endswith(".json")]
    except OSError:
        return removed
    for name in journals:
        path = os.path.join(journal_folder(), name)
        try:
            with open(path, encoding="utf-8") as f:
                journal = json.load(f)
            if process_alive(journal["pid"], journal["started"]):
                continue
            for tmp, target in journal["files"]:
                for leftover in (tmp, target):
                    if os.path.lexists(leftover):
                        remove_quietly(leftover)
                        removed.append(leftover)
        except (OSError, ValueError, KeyError, TypeError):  # a journal cut short was written before any file
            pass
        remove_quietly(path)
    return removed


def save_atomically(files: list[tuple[str, Callable[[str], object]]], what: str,
                    input_name: str = "filename") -> list:
    """Write each ``(target, write)`` (``write(path)`` writes the file) all or none, never replacing a file (the
    names, from input ``input_name``, are checked before anything is created): each
    to a temporary beside its target, then all renamed into place. A failure removes what was written and renamed;
    a crash is rolled back by ``recover_unfinished_saves``. Returns what each ``write`` returned."""
    recover_unfinished_saves()
    for target, _ in files:
        check_name(os.path.basename(target), input_name, what)
        prepare_folder(os.path.dirname(target), what)
        if os.path.lexists(target):
            raise FileExistsError(f"{what}: {target} already exists; it is not overwritten. Run again (the next "
                                  "free number is taken) or pick another name.")
    staged = [(temp_path_beside(target), target) for target, _ in files]
    pid, started = this_process()
    os.makedirs(journal_folder(), exist_ok=True)
    journal = os.path.join(journal_folder(), f"{pid}_{uuid.uuid4().hex[:12]}.json")
    placed: list[str] = []
    try:
        with open(journal, "w", encoding="utf-8") as f:
            json.dump({"pid": pid, "started": started, "files": staged}, f)
        results = []
        for (tmp, target), (_, write) in zip(staged, files):
            try:
                results.append(write(tmp))
                if not os.path.isfile(tmp) or os.path.getsize(tmp) == 0:
                    raise RuntimeError(f"{what}: the writer wrote nothing for {os.path.basename(target)}.")
            except (OSError, SafetensorError) as error:
                raise write_failed(target, what, error) from None
        for tmp, target in staged:
            place(tmp, target, what)
            placed.append(target)
        return results
    except BaseException:
        for path in placed:
            remove_quietly(path)
        for tmp, _ in staged:
            remove_quietly(tmp)
        raise
    finally:
        remove_quietly(journal)


def place(tmp: str, target: str, what: str) -> None:
    """Rename ``tmp`` to ``target``, which must not exist; one-line error naming the file when the system refuses
    (Windows refuses while another program holds the file open)."""
    if os.path.lexists(target):
        raise FileExistsError(f"{what}: {target} appeared during the save; it is not overwritten. Run again.")
    try:
        os.replace(tmp, target)
    except OSError as error:
        raise OSError(f"{what}: could not rename the finished file into {target} ({error.strerror or error}); nothing "
                      "was saved. Close any program using that folder's files (viewer, antivirus scan), then run "
                      "again.") from None


def save_safetensors_group(files: list[tuple[dict, dict, str]], what: str) -> None:
    """Write each ``(tensors, metadata, path)`` as safetensors, all or none (see ``save_atomically``)."""
    def writer(tensors, metadata):
        return lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)

    save_atomically([(path, writer(tensors, metadata)) for tensors, metadata, path in files], what)


# ----- checked loads -------------------------------------------------------------------------------------------------

def conversion_command(path: str) -> str:
    """The shell command that converts the pickled file ``path`` to a .safetensors file beside it (torch.load with
    weights_only, which refuses anything but tensors and plain containers)."""
    target = os.path.splitext(path)[0] + ".safetensors"
    return ("python -c \"import torch, safetensors.torch as st; st.save_file({k: v.contiguous() for k, v in "
            f"torch.load(r'{path}', map_location='cpu', weights_only=True).items()}}, r'{target}')\"")


def read_safetensors(path: str, input_name: str, dtypes: tuple = FLOAT_DTYPES,
                     ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; ValueError naming ``input_name`` and the file when it is not
    a readable safetensors file, holds a tensor of another dtype than ``dtypes`` or holds NaN / Inf (which would
    turn every edit into NaN)."""
    name = os.path.basename(path)
    if not path.endswith(".safetensors"):
        raise ValueError(f"{input_name}: {name} is not a .safetensors file; pickled files (.pt/.ckpt/.pth/.bin) can "
                         "run arbitrary code when loaded, so they are refused. Convert it to .safetensors first (only "
                         f"if you trust its source), then pick the new file: {conversion_command(path)}")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{input_name}: {name} could not be read as safetensors ({error}); the file is truncated or "
                         "corrupt. Save it again, or pick another file.") from None
    for key, tensor in tensors.items():
        if tensor.dtype not in dtypes:
            allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
            raise ValueError(f"{input_name}: {name} holds a {str(tensor.dtype).removeprefix('torch.')} tensor ({key}) "
                             f"where only {allowed} weights belong; it was not written for this input. Save it again "
                             "with the pack's save node, or pick another file.")
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{input_name}: {name} holds NaN or Inf values (in {key}); the training that wrote it "
                             "diverged. Train again with a lower learning rate, or pick another file.")
    return tensors, metadata
