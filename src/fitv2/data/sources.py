"""Listing a dataset's images: a folder of class sub-folders, or a JSONL file of rows.

Both give :class:`Source` records (path, label, caption) and the class names, and refuse a
malformed listing with an error that names the file and line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .images import IMAGE_SUFFIXES


@dataclass
class Source:
    path: Path
    label: int
    caption: str = ""


def caption_from_name(path: Path) -> str:
    words = re.sub(r"[_\-.]+", " ", path.stem)
    words = re.sub(r"\d+", " ", words)
    return " ".join(words.split()).lower()


def list_folder(root: Path, *, broken_links: bool = False) -> tuple[list[Source], list[str]]:
    """One sub-folder per class (sorted names = labels 0..K−1).

    broken_links: also list symbolic links whose target is gone, so that they are reported as
    skipped rather than silently missing from the dataset."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        loose = any(f.suffix.lower() in IMAGE_SUFFIXES and f.is_file() for f in root.iterdir())
        hint = "; put the images in one sub-folder per class (one sub-folder if unlabelled)" if loose else ""
        raise UserError(f"{root} has no class sub-folders{hint}")
    sources = []
    for label, name in enumerate(classes):
        for f in sorted((root / name).rglob("*")):
            if f.name.startswith("."):
                continue
            if f.is_file() or (broken_links and f.is_symlink() and not f.exists()):
                sources.append(Source(f, label, caption_from_name(f)))
    if not sources:
        raise UserError(
            f"the class folders of {root} ({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}) hold no files"
        )
    return sources, classes


def _row_label(value, where: str) -> int:
    if isinstance(value, str) and value.strip().isdecimal():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{where}: 'label' must be a class number 0, 1, ...; got {value!r}")
    if value < 0:
        raise UserError(f"{where}: 'label' must be 0 or more; got {value}")
    return value


def _read_rows(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a JSONL text file (one JSON object per line)") from None
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(
                f'{where} is not JSON ({err.msg}); each line must be an object like {{"path": "a.png", "label": 0}}'
            ) from None
        if not isinstance(row, dict):
            raise UserError(f"{where} is not a JSON object with 'path' and 'label'")
        for key in ("path", "label"):
            if key not in row:
                raise UserError(f"{where} has no {key!r}")
        if not isinstance(row["path"], str) or not row["path"].strip():
            raise UserError(f"{where}: 'path' must be a file name; got {row['path']!r}")
        row["label"] = _row_label(row["label"], where)
        for key in ("caption", "split", "class_name"):
            if row.get(key) is not None and not isinstance(row[key], str):
                raise UserError(f"{where}: {key!r} must be a string; got {row[key]!r}")
        rows.append(row)
    return rows


def list_jsonl(path: Path, split: str | None = None) -> tuple[list[Source], list[str]]:
    """Rows {path, label, caption?, split?, class_name?}; paths relative to the file's folder."""
    rows = _read_rows(path)
    if split is not None:
        rows = [r for r in rows if r.get("split") == split]
    if not rows:
        raise UserError(f"{path} lists no images" + (f" in split {split!r}" if split else ""))
    base = path.parent
    sources = [
        Source(base / r["path"], r["label"], r.get("caption") or caption_from_name(Path(r["path"]))) for r in rows
    ]
    top = max(r["label"] for r in rows)
    classes_file = base / "classes.json"
    if classes_file.is_file():
        try:
            classes = json.loads(classes_file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UserError(f"{classes_file} is not a JSON list of class names: {err}") from None
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise UserError(f"{classes_file} must be a JSON list of class names")
        if top >= len(classes):
            raise UserError(f"{path} uses label {top} but {classes_file} names only {len(classes)} classes")
    else:
        names = {r["label"]: r.get("class_name") or str(r["label"]) for r in rows}
        classes = [names.get(i, str(i)) for i in range(top + 1)]
    return sources, classes
