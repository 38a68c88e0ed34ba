"""A run folder's checkpoints: where they live, whether one is intact, which one is the newest, and
how one is written so that a crash or a full disk never leaves a broken one where a resume would look.

``OUT/checkpoints/step_NNNNNNN/`` holds config.json, model.safetensors, ema.safetensors,
train_state.pt and, written last, manifest.json: the size and sha256 of each file. A
checkpoint is intact when its files match the manifest (sizes first, which costs nothing,
then hashes); one written before manifests existed is checked by its structure instead (a
safetensors header that covers its file, a zip whose CRCs match, a config that parses).
``OUT/checkpoints/latest`` holds the name of the newest checkpoint, relative to
checkpoints/, and is never followed out of it. A resume whose newest checkpoint is broken
falls back to the newest intact one, deletes nothing and says so. Training writes and resumes
checkpoints here (:mod:`fitv2.training.run` plans a run on top of this); sampling reads a run
folder's newest intact checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import CheckpointError, atomic_write, fsync_path, read_config_json, read_model_config, save_json
from .errors import MissingFileError, UserError

MANIFEST = "manifest.json"


REQUIRED_FILES = ("config.json", "model.safetensors", "train_state.pt")


_STEP = re.compile(r"step_(\d+)")


def checkpoints_dir(out: str | Path) -> Path:
    return Path(out) / "checkpoints"


def checkpoint_dir(out: str | Path, step: int) -> Path:
    return checkpoints_dir(out) / f"step_{step:07d}"


def step_of(path: Path) -> int | None:
    match = _STEP.fullmatch(path.name)
    return int(match.group(1)) if match else None


def _step(folder: Path) -> int:
    """The step of a folder known to be a checkpoint folder (named step_N)."""
    step = step_of(folder)
    if step is None:
        raise ValueError(f"{folder} is not named like a checkpoint folder (step_N)")
    return step


def is_inside(path: Path, folder: Path) -> bool:
    resolved, root = path.resolve(), folder.resolve()
    return resolved != root and resolved.is_relative_to(root)


def step_folders(checkpoints: Path) -> list[Path]:
    """The checkpoint folders in ``checkpoints`` by step, oldest first; links out of it are not among them."""
    if not checkpoints.is_dir():
        return []
    folders = [p for p in checkpoints.iterdir() if step_of(p) is not None and p.is_dir() and is_inside(p, checkpoints)]
    return sorted(folders, key=_step)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(directory: Path) -> None:
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name != MANIFEST and not p.name.startswith("."))
    save_json(
        {"format": 1, "files": {p.name: {"size": p.stat().st_size, "sha256": sha256(p)} for p in files}},
        directory / MANIFEST,
    )


def checkpoint_problem(directory: Path, hashes: bool = True) -> str | None:
    """Why the checkpoint folder ``directory`` cannot be resumed from, or None when it is intact."""
    if not directory.is_dir():
        return "the folder does not exist"
    problem = _manifest_problem(directory, hashes) if (directory / MANIFEST).exists() else _structure_problem(directory)
    if problem:
        return problem
    try:
        read_model_config(directory)
        data = read_config_json(directory)
    except UserError as err:
        return str(err)
    if not isinstance(data.get("train"), dict):
        return "config.json holds no training options"
    return None


def _manifest_problem(directory: Path, hashes: bool) -> str | None:
    try:
        files = json.loads((directory / MANIFEST).read_text())["files"]
        entries = {str(name): (int(e["size"]), str(e["sha256"])) for name, e in files.items()}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        return f"{MANIFEST} is unreadable"
    for name in REQUIRED_FILES:
        if name not in entries:
            return f"{MANIFEST} does not list {name}"
    for name, (size, _) in entries.items():
        file = directory / name
        if Path(name).name != name or name in (".", ".."):
            return f"{MANIFEST} names {name!r}, which is not a file of the checkpoint"
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size:,} bytes, {size:,} were written"
    if hashes:
        for name, (_, digest) in entries.items():
            if sha256(directory / name) != digest:
                return f"{name} does not match the checksum written with it"
    return None


def _structure_problem(directory: Path) -> str | None:
    import zipfile

    for name in REQUIRED_FILES:
        if not (directory / name).is_file():
            return f"{name} is missing"
    for name in ("model.safetensors", "ema.safetensors"):
        if (directory / name).exists():
            problem = _safetensors_problem(directory / name)
            if problem:
                return problem
    try:
        with zipfile.ZipFile(directory / "train_state.pt") as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return "train_state.pt is not an intact archive"
    return f"train_state.pt: {bad} fails its CRC check" if bad else None


def _safetensors_problem(file: Path) -> str | None:
    size = file.stat().st_size
    try:
        with open(file, "rb") as f:
            head = f.read(8)
            length = int.from_bytes(head, "little")
            if len(head) < 8 or length > size - 8:
                return f"{file.name} is truncated"
            header = json.loads(f.read(length))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return f"{file.name} is not a safetensors file"
    if 8 + length + end != size:
        return f"{file.name} has {size:,} bytes, its header describes {8 + length + end:,}"
    return None


def _pointer(checkpoints: Path) -> tuple[Path | None, str | None]:
    """The folder ``checkpoints/latest`` names, or None and why it is not followed."""
    pointer = checkpoints / "latest"
    if not pointer.exists() and not pointer.is_symlink():
        return None, None
    if pointer.is_symlink() or not pointer.is_file():
        return None, "checkpoints/latest is not a plain file; ignored"
    try:
        name = pointer.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None, "checkpoints/latest is unreadable; ignored"
    if not _STEP.fullmatch(name):
        return None, f"checkpoints/latest holds {name[:80]!r}, not the name of a checkpoint folder; ignored"
    target = checkpoints / name
    if target.is_symlink() or (target.exists() and not is_inside(target, checkpoints)):
        return None, f"checkpoints/latest names {name}, which leads out of the run folder; ignored"
    return target, None


@dataclass
class ResumeChoice:
    path: Path | None  # None: nothing to resume, start at step 0
    warning: str | None = None


def pick_resume(out: str | Path, resume: str | None) -> ResumeChoice:
    """The checkpoint a run with ``--resume resume`` continues from.

    'latest': what checkpoints/latest names, else the newest intact checkpoint before it; a
    folder with no checkpoints gives None. A named checkpoint must be intact.
    """
    if resume is None:
        return ResumeChoice(None)
    if resume != "latest":
        path = Path(resume)
        if not path.exists():
            raise MissingFileError(f"--resume checkpoint not found: {resume}")
        if not path.is_dir() or not ((path / "train_state.pt").is_file() or (path / MANIFEST).is_file()):
            raise CheckpointError(f"{resume} is not a training checkpoint (no train_state.pt)")
        problem = checkpoint_problem(path)
        if problem:
            raise CheckpointError(f"{resume} is not an intact training checkpoint: {problem}")
        return ResumeChoice(path)
    checkpoints = checkpoints_dir(out)
    folders = step_folders(checkpoints)
    target, note = _pointer(checkpoints)
    if target is None and not folders:
        return ResumeChoice(None, note)
    # A folder past the one latest names is left from before a resume of an older checkpoint.
    bound = _step(target) if target is not None else None
    order = [target] if target is not None else []
    order += [p for p in reversed(folders) if p != target and (bound is None or _step(p) < bound)]
    skipped = [note] if note else []
    for candidate in order:
        problem = checkpoint_problem(candidate)
        if problem is None:
            warning = None
            if skipped:
                warning = (
                    f"{'; '.join(skipped)}: resuming from {candidate.name}, the newest intact checkpoint "
                    "(nothing was deleted)"
                )
            return ResumeChoice(candidate, warning)
        skipped.append(f"{candidate.name} is not intact ({problem})")
    raise UserError(
        f"no intact checkpoint to resume in {checkpoints}: {'; '.join(skipped)}; pass --overwrite to start afresh"
    )


def newest_checkpoint(path: str | Path) -> Path | None:
    """The checkpoint to sample from a run folder (or its ``checkpoints/`` folder): what
    checkpoints/latest names, else the newest intact one. None when ``path`` is neither."""
    path = Path(path)
    if path.name == "checkpoints" and path.is_dir() and not (path / "config.json").exists():
        path = path.parent
    if not checkpoints_dir(path).is_dir():
        return None
    return pick_resume(path, "latest").path


def _reason(err: OSError) -> str:
    reason = err.strerror or str(err) or type(err).__name__
    return f"{reason} ({Path(err.filename).name})" if err.filename else reason


def write_checkpoint(final: Path, write: Callable[[Path], None], keep: int) -> None:
    """``write(folder)`` into ``final``.tmp, then manifest, fsync, rename, point latest at it, rotate.

    A failed write removes the partial folder and raises a UserError; the earlier checkpoints
    and the latest pointer are left as they were.
    """
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        write(tmp)
        write_manifest(tmp)
        fsync_path(tmp)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):
            raise UserError(
                f"could not write checkpoint {final}: {_reason(err)}; removed the partial folder "
                f"{tmp.name}, the earlier checkpoints are untouched"
            ) from err
        raise
    try:
        if final.exists():  # left from before a resume of an older checkpoint
            shutil.rmtree(final)
        tmp.rename(final)
        fsync_path(final.parent)
        atomic_write(final.parent / "latest", lambda path: Path(path).write_text(final.name + "\n"))
    except OSError as err:
        raise UserError(f"could not put checkpoint {final} in place: {_reason(err)}") from err
    rotate(final, keep)


def rotate(final: Path, keep: int) -> None:
    """Keep ``final`` and the ``keep`` - 1 checkpoints before it; older ones and partial folders go."""
    current = _step(final)
    older = [p for p in step_folders(final.parent) if _step(p) < current]
    for old in older[: max(0, len(older) - (max(keep, 1) - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    for partial in final.parent.glob("step_*.tmp"):
        shutil.rmtree(partial, ignore_errors=True)


__all__ = [
    "checkpoint_dir",
    "checkpoint_problem",
    "newest_checkpoint",
    "pick_resume",
    "step_folders",
    "write_checkpoint",
]
