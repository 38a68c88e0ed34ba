"""Listing a dataset's sources: a folder of class sub-folders, a JSONL file of rows, or the released
FiTv2 ImageNet latents.

The first two give :class:`Source` records (path, label, caption) and the class names, and refuse a
malformed listing with an error that names the file and line; :class:`Listing` holds such a list
as arrays, for the millions of files of ImageNet. The released layout (github.com/whlzy/FiT,
``tools/download_in1k_latents_*.sh``) is recognised by its folder names::

    DIR/from_16_to_L/NAME.safetensors           16 ≤ tokens ≤ L, at native size (floored to /16)
    DIR/greater_than_L_resize/NAME.safetensors  larger images resized to area S²
    DIR/greater_than_L_crop/NAME.safetensors    their S × S centre crops, where both sides exceed S
    DIR/less_than_16/NAME.safetensors           fewer than 16 tokens: left out, as the reference loader does

and listed as :class:`ReleasedItem` records: a resize and a crop file of the same name are one image.
"""

from __future__ import annotations

import json
import os
import re
from array import array
from collections.abc import Iterable, Iterator
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


def _class_folders(root: Path) -> list[str]:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        loose = any(f.suffix.lower() in IMAGE_SUFFIXES and f.is_file() for f in root.iterdir())
        hint = "; put the images in one sub-folder per class (one sub-folder if unlabelled)" if loose else ""
        raise UserError(f"{root} has no class sub-folders{hint}")
    return classes


def _class_files(root: Path, classes: list[str], broken_links: bool) -> Iterator[tuple[int, list[Path]]]:
    """(label, sorted files) of each class folder in turn."""
    for label, name in enumerate(classes):
        files = []
        for f in sorted((root / name).rglob("*")):
            if f.name.startswith("."):
                continue
            if f.is_file() or (broken_links and f.is_symlink() and not f.exists()):
                files.append(f)
        yield label, files


def _no_files(root: Path, classes: list[str]) -> UserError:
    return UserError(
        f"the class folders of {root} ({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}) hold no files"
    )


def list_folder(root: Path, *, broken_links: bool = False) -> tuple[list[Source], list[str]]:
    """One sub-folder per class (sorted names = labels 0..K−1).

    broken_links: also list symbolic links whose target is gone, so that they are reported as
    skipped rather than silently missing from the dataset."""
    classes = _class_folders(root)
    sources = [
        Source(f, label, caption_from_name(f))
        for label, files in _class_files(root, classes, broken_links)
        for f in files
    ]
    if not sources:
        raise _no_files(root, classes)
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


class Strings:
    """Many strings as one UTF-8 buffer and an offset array: 8 bytes of overhead a string, not ~50."""

    def __init__(self, strings: Iterable[str] = ()):
        self.data = bytearray()
        self.offsets = array("Q", [0])
        self.extend(strings)

    def extend(self, strings: Iterable[str]) -> None:
        for text in strings:
            self.data += text.encode("utf-8", "surrogateescape")
            self.offsets.append(len(self.data))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self.data[self.offsets[i] : self.offsets[i + 1]].decode("utf-8", "surrogateescape")


class Listing:
    """The sources of a dataset in a fixed order, held as arrays (tens of bytes a file, so every rank
    of a prepare can list ImageNet); ``listing[i]`` is a :class:`Source`."""

    def __init__(self, classes: list[str], captions_from_names: bool = True):
        self.classes = classes
        self.paths = Strings()
        self.labels = array("i")
        self.captions: Strings | None = None if captions_from_names else Strings()

    @classmethod
    def of_folder(cls, root: Path, *, broken_links: bool = False) -> Listing:
        listing = cls(_class_folders(root))
        for label, files in _class_files(root, listing.classes, broken_links):
            listing.paths.extend(str(f) for f in files)
            listing.labels.extend([label] * len(files))
        if not len(listing):
            raise _no_files(root, listing.classes)
        return listing

    @classmethod
    def of_sources(cls, sources: list[Source], classes: list[str]) -> Listing:
        listing = cls(classes, captions_from_names=False)
        listing.paths.extend(str(s.path) for s in sources)
        listing.labels.extend(s.label for s in sources)
        assert listing.captions is not None
        listing.captions.extend(s.caption for s in sources)
        return listing

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> Source:
        path = Path(self.paths[i])
        caption = caption_from_name(path) if self.captions is None else self.captions[i]
        return Source(path, self.labels[i], caption)


# ----------------------------------------------------------------------------- released latents

_RELEASED = re.compile(r"^(?:from_16_to_(\d+)|greater_than_(\d+)_(?:resize|crop))$")
SMALL_FOLDER = "less_than_16"


def released_budget(root: Path) -> int | None:
    """The token budget L of a folder in the released latent layout (256 or 1024), or None if it is not one."""
    if not root.is_dir():
        return None
    budgets = {int(m.group(1) or m.group(2)) for d in root.iterdir() if d.is_dir() and (m := _RELEASED.match(d.name))}
    if len(budgets) > 1:
        raise UserError(f"{root} holds released latents of several token budgets ({sorted(budgets)}); keep one")
    return budgets.pop() if budgets else None


def released_folders(budget_tokens: int) -> tuple[str, str, str]:
    """The native-size, resize and crop folder names of a token budget."""
    L = budget_tokens
    return f"from_16_to_{L}", f"greater_than_{L}_resize", f"greater_than_{L}_crop"


@dataclass(frozen=True)
class ReleasedItem:
    """One image of the released layout: its resize (or native-size) file and its crop file, by path
    relative to the folder; ``kind`` 0 native, 1 larger than the budget, 2 less than 16 tokens."""

    resize: str | None
    crop: str | None
    kind: int


class ReleasedListing:
    """The images of a released-latent folder in a fixed order (native-size, then larger images,
    then the small ones if kept; by file name within each), held as arrays."""

    def __init__(self, root: Path, budget_tokens: int, keep_small: bool = False):
        self.root, self.budget_tokens = root, budget_tokens
        native, resize, crop = released_folders(budget_tokens)
        self.names = Strings()
        self.flags = bytearray()  # bit 0: has a resize file; bit 1: has a crop file; bits 2-3: kind
        self.names.extend(self._files(native))
        self.flags.extend(bytes([1]) * len(self.names))
        resized, cropped = self._files(resize), self._files(crop)
        both = sorted({*resized, *cropped})
        self.names.extend(both)
        has_resize, has_crop = set(resized), set(cropped)
        self.flags.extend(bytes((n in has_resize) | (n in has_crop) << 1 | 1 << 2 for n in both))
        if keep_small:
            small = self._files(SMALL_FOLDER)
            self.names.extend(small)
            self.flags.extend(bytes([1 | 2 << 2]) * len(small))
        if not len(self.names):
            where = f"{native}, {resize}" + (f", {SMALL_FOLDER}" if keep_small else "")
            raise UserError(f"the released-latent folders of {root} ({where}) hold no .safetensors files")
        self.folders = (native, resize, crop)

    def _files(self, folder: str) -> list[str]:
        if not (self.root / folder).is_dir():
            return []
        with os.scandir(self.root / folder) as entries:
            return sorted(e.name for e in entries if e.name.endswith(".safetensors") and not e.name.startswith("."))

    def __len__(self) -> int:
        return len(self.flags)

    def __getitem__(self, i: int) -> ReleasedItem:
        name, flags = self.names[i], self.flags[i]
        kind = flags >> 2
        first = {0: self.folders[0], 1: self.folders[1], 2: SMALL_FOLDER}[kind]
        return ReleasedItem(
            f"{first}/{name}" if flags & 1 else None, f"{self.folders[2]}/{name}" if flags & 2 else None, kind
        )
