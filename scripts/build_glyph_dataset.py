#!/usr/bin/env python3
"""Build the embedded glyph dataset in ``data/glyphs/``.

Source: freely licensed Debian font packages (see ``PACKAGES``), installed with::

    apt-get install -y --no-install-recommends <the packages in PACKAGES>

Every image is one character (digits ``0-9``, letters ``A-Z`` and ``a-z``; the class is the
character) rendered in one font face, in one foreground colour on one background colour of a
small named palette, at its **native aspect ratio**.

The script is deterministic: the face list is a fixed table (``FACES``) resolved to files with
``dpkg -L``, every random choice comes from ``random.Random`` seeded with a string built from
``--seed``, the split and the character, and images are rendered in a fixed order.  Re-running it
with the same package versions, Pillow/FreeType/zlib versions and arguments reproduces the dataset
byte for byte.

Pipeline:

1. resolve every face of ``FACES`` (file, design group, kind serif/sans/mono/script/display,
   weight regular/bold, slant upright/italic) to its file and package; refuse a face that lacks
   one of the 62 characters (it would render .notdef);
2. per face, render all 62 characters with FreeType at ``RENDER_EM`` px per em (anti-aliased,
   left-baseline anchor) and take the union of their ink boxes vertically: the face's *body*,
   from the highest ascender or cap to the lowest descender;
3. plan the images (see "Splits" below): per image a face, a foreground and a background colour
   (a pair whose WCAG contrast ratio is >= ``MIN_CONTRAST``), and a body height in pixels
   (uniform in ``--body-min``..``--body-max``);
4. render: crop horizontally to the glyph's own ink box plus a margin of ``MARGIN_X`` x body
   height, vertically to the face's body plus ``MARGIN_Y`` x body height (so ``o``/``O``,
   ``p``/``P``, ``x``/``X`` keep their different heights and positions), downscale with a box
   filter (area average = anti-aliasing), quantize the coverage to ``LEVELS`` levels and colour it:
   a palette PNG of at most 16 colours that stores the rendering exactly (``optimize=True``);
5. write ``images/<class_dir>/<split>_<NNNN>.png`` (class folders ``digit_7``, ``upper_G``,
   ``lower_g``: unique on case-insensitive file systems), ``metadata.jsonl`` (sorted by path),
   ``classes.json``, ``build_stats.json``, ``DATA_CARD.md`` and ``docs/glyphs_overview.png``.

Splits:

* ``train``: faces of the training design groups;
* ``test``: faces of ``TEST_GROUPS`` only: whole design groups (clones and derivatives of one
  design, e.g. Nimbus Sans and FreeSans, are one group), never seen in training;
* ``combo``: combinations held out of ``train``: (character, foreground colour) and
  (character, style) pairs drawn once from ``--seed`` (``held_out_pairs``); every character,
  colour and style still occurs in ``train`` with other partners.  ``combo`` images use the
  *training* faces: the combination is new, the fonts are not.

The ambiguity measurement (can a small CNN tell every class apart on unseen fonts?) is made by
``scripts/measure_glyph_ambiguity.py`` (it needs torch) after a build; when its result file
``data/glyphs/ambiguity.json`` exists, this script copies it into ``build_stats.json`` and the
data card, with a note if it was measured on different metadata.

Usage (from the repository root)::

    python scripts/build_glyph_dataset.py

Only Pillow and numpy are needed.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import json
import math
import os
import random
import shutil
import string
import subprocess
import sys
import time

import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---------------------------------------------------------------------------
# Characters and classes
# ---------------------------------------------------------------------------
ALL_CHARS = string.digits + string.ascii_uppercase + string.ascii_lowercase
# Characters left out of the dataset (see the ambiguity measurement in the data card).
DROPPED_CHARS = ""
CASE_WORD = {"digit": "digit", "upper": "capital", "lower": "lowercase"}


def case_of(ch: str) -> str:
    return "digit" if ch.isdigit() else "upper" if ch.isupper() else "lower"


def class_dir(ch: str) -> str:
    return f"{case_of(ch)}_{ch}"


# ---------------------------------------------------------------------------
# Colours: name -> sRGB.  A (foreground, background) pair is used only if its WCAG 2 contrast
# ratio is >= MIN_CONTRAST (3.0 is WCAG's minimum for large text).
# ---------------------------------------------------------------------------
COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "grey": (128, 128, 128),
    "red": (210, 30, 30),
    "green": (30, 140, 40),
    "blue": (30, 70, 210),
    "yellow": (250, 215, 20),
    "orange": (245, 130, 20),
    "purple": (125, 45, 165),
    "brown": (120, 75, 35),
    "pink": (245, 140, 185),
    "cyan": (30, 190, 210),
}
MIN_CONTRAST = 3.0

# ---------------------------------------------------------------------------
# Fonts.  PACKAGES: Debian package -> (licence, copyright holders), both from
# /usr/share/doc/<package>/copyright (the "Files: *" stanza).
# ---------------------------------------------------------------------------
PACKAGES: dict[str, tuple[str, str]] = {
    "fonts-dejavu-core": ("Bitstream Vera licence (DejaVu changes: public domain)", "2003 Bitstream, Inc."),
    "fonts-dejavu-extra": ("Bitstream Vera licence (DejaVu changes: public domain)", "2003 Bitstream, Inc."),
    "fonts-liberation": ("GPL-2 with font exception (Red Hat licence agreement)", "2007 Red Hat, Inc."),
    "fonts-urw-base35": ("AGPL-3 with font exception", "2015 URW Software; 2013, 2014 (URW)++ Design & Development"),
    "fonts-freefont-ttf": ("GPL-3+ with Special Font Exception", "2002-2012 GNU FreeFont contributors"),
    "fonts-noto-core": ("OFL-1.1", "2010, 2012-2020 Google Inc.; 2015-2020 Google LLC"),
    "fonts-noto-mono": ("OFL-1.1", "2010, 2012-2020 Google Inc.; 2015-2020 Google LLC"),
    "fonts-ebgaramond": ("OFL-1.1", "2010-2012 Georg Duffner"),
    "fonts-linuxlibertine": ("GPL-2+ with font exception, and OFL-1.1 (dual)", "2003-2009 Philipp H. Poll"),
    "fonts-cantarell": ("OFL-1.1", "2009-2011 Understanding Limited; 2010-2011 Jakub Steiner"),
    "fonts-lato": ("OFL-1.1", "2010-2011 Łukasz Dziedzic"),
    "fonts-inconsolata": ("OFL-1.0", "2006 Raph Levien"),
    "fonts-firacode": ("OFL-1.1", "2014 Nikita Prokopov; 2014 Mozilla Foundation; 2014 Telefonica S.A."),
    "fonts-comic-neue": ("OFL-1.1", "2014-2016 Craig Rozynski; 2014 Hrant Papazian; 2016 Brandon Schoech"),
    "fonts-crosextra-caladea": ("OFL-1.1", "2012 Carolina Giovagnoli and Andres Torresi, Huerta Tipografica"),
    "fonts-roboto-unhinted": ("Apache-2.0", "2015 Google Inc."),
    "fonts-sil-charis": ("OFL-1.1 (reserved font names)", "1997-2022 SIL International; Charter: 1989-1992 Bitstream"),
    "fonts-sil-andika": ("OFL-1.1 (reserved font names)", "2004-2022 SIL International"),
    "fonts-dancingscript": ("OFL-1.1", "2010 Pablo Impallari; 2010 Igino Marini"),
    "fonts-lobster": ("OFL-1.1", "2011 Pablo Impallari; 2011 Igino Marini"),
    "fonts-quicksand": ("OFL-1.1", "2011 The Quicksand Project Authors"),
    "fonts-comfortaa": ("OFL-1.1", "2008-2017 Johan Aakerlund"),
    "fonts-cabin": ("OFL-1.1", "2011 Pablo Impallari; 2011 Igino Marini"),
    "fonts-jetbrains-mono": ("Apache-2.0", "2020 JetBrains s.r.o."),
    "fonts-go": ("BSD-3-Clause", "2016 Bigelow & Holmes Inc."),
    "fonts-adf-gillius": ("GPL-2+ with font exception", "1998-2019 Hirwen Harendal, Arkandis Digital Foundry"),
    "fonts-adf-accanthis": ("GPL-2+ with font exception", "1998-2019 Hirwen Harendal, Arkandis Digital Foundry"),
}

R, B = "regular", "bold"
UP, IT = "upright", "italic"  # oblique faces count as italic


def _four(files: str, group: str, kind: str) -> list[tuple[str, str, str, str, str]]:
    """'A B C D' = the regular, bold, italic and bold italic files of one family."""
    styles = [(R, UP), (B, UP), (R, IT), (B, IT)]
    return [(f, group, kind, w, s) for f, (w, s) in zip(files.split(), styles, strict=True)]


# (file name, design group, kind, weight, slant).  A design group holds one design and its
# clones or derivatives (FreeSans is derived from Nimbus Sans, both are Helvetica clones), so that
# a test group shares no design with the training groups.
FACES: list[tuple[str, str, str, str, str]] = [
    *_four("DejaVuSans.ttf DejaVuSans-Bold.ttf DejaVuSans-Oblique.ttf DejaVuSans-BoldOblique.ttf", "dejavu", "sans"),
    *_four(
        "DejaVuSansCondensed.ttf DejaVuSansCondensed-Bold.ttf DejaVuSansCondensed-Oblique.ttf "
        "DejaVuSansCondensed-BoldOblique.ttf",
        "dejavu",
        "sans",
    ),
    *_four("DejaVuSerif.ttf DejaVuSerif-Bold.ttf DejaVuSerif-Italic.ttf DejaVuSerif-BoldItalic.ttf", "dejavu", "serif"),
    *_four(
        "DejaVuSansMono.ttf DejaVuSansMono-Bold.ttf DejaVuSansMono-Oblique.ttf DejaVuSansMono-BoldOblique.ttf",
        "dejavu",
        "mono",
    ),
    *_four(
        "NimbusSans-Regular.otf NimbusSans-Bold.otf NimbusSans-Italic.otf NimbusSans-BoldItalic.otf",
        "helvetica",
        "sans",
    ),
    *_four(
        "NimbusSansNarrow-Regular.otf NimbusSansNarrow-Bold.otf NimbusSansNarrow-Oblique.otf "
        "NimbusSansNarrow-BoldOblique.otf",
        "helvetica",
        "sans",
    ),
    *_four("FreeSans.ttf FreeSansBold.ttf FreeSansOblique.ttf FreeSansBoldOblique.ttf", "helvetica", "sans"),
    *_four(
        "NimbusRoman-Regular.otf NimbusRoman-Bold.otf NimbusRoman-Italic.otf NimbusRoman-BoldItalic.otf",
        "times",
        "serif",
    ),
    *_four("FreeSerif.ttf FreeSerifBold.ttf FreeSerifItalic.ttf FreeSerifBoldItalic.ttf", "times", "serif"),
    *_four(
        "NimbusMonoPS-Regular.otf NimbusMonoPS-Bold.otf NimbusMonoPS-Italic.otf NimbusMonoPS-BoldItalic.otf",
        "courier",
        "mono",
    ),
    *_four("FreeMono.ttf FreeMonoBold.ttf FreeMonoOblique.ttf FreeMonoBoldOblique.ttf", "courier", "mono"),
    *_four("C059-Roman.otf C059-Bold.otf C059-Italic.otf C059-BdIta.otf", "century", "serif"),
    *_four("P052-Roman.otf P052-Bold.otf P052-Italic.otf P052-BoldItalic.otf", "palatino", "serif"),
    *_four(
        "URWBookman-Light.otf URWBookman-Demi.otf URWBookman-LightItalic.otf URWBookman-DemiItalic.otf",
        "bookman",
        "serif",
    ),
    *_four(
        "URWGothic-Book.otf URWGothic-Demi.otf URWGothic-BookOblique.otf URWGothic-DemiOblique.otf",
        "avantgarde",
        "sans",
    ),
    ("Z003-MediumItalic.otf", "zapfchancery", "script", R, IT),
    *_four(
        "LiberationSans-Regular.ttf LiberationSans-Bold.ttf LiberationSans-Italic.ttf LiberationSans-BoldItalic.ttf",
        "liberation",
        "sans",
    ),
    *_four(
        "LiberationSansNarrow-Regular.ttf LiberationSansNarrow-Bold.ttf LiberationSansNarrow-Italic.ttf "
        "LiberationSansNarrow-BoldItalic.ttf",
        "liberation",
        "sans",
    ),
    *_four(
        "LiberationSerif-Regular.ttf LiberationSerif-Bold.ttf LiberationSerif-Italic.ttf "
        "LiberationSerif-BoldItalic.ttf",
        "liberation",
        "serif",
    ),
    *_four(
        "LiberationMono-Regular.ttf LiberationMono-Bold.ttf LiberationMono-Italic.ttf LiberationMono-BoldItalic.ttf",
        "liberation",
        "mono",
    ),
    *_four("NotoSans-Regular.ttf NotoSans-Bold.ttf NotoSans-Italic.ttf NotoSans-BoldItalic.ttf", "noto", "sans"),
    *_four("NotoSerif-Regular.ttf NotoSerif-Bold.ttf NotoSerif-Italic.ttf NotoSerif-BoldItalic.ttf", "noto", "serif"),
    *_four(
        "NotoSerifDisplay-Regular.ttf NotoSerifDisplay-Bold.ttf NotoSerifDisplay-Italic.ttf "
        "NotoSerifDisplay-BoldItalic.ttf",
        "noto",
        "serif",
    ),
    ("NotoSansMono-Regular.ttf", "noto", "mono", R, UP),
    ("NotoSansMono-Bold.ttf", "noto", "mono", B, UP),
    ("EBGaramond12-Regular.otf", "garamond", "serif", R, UP),
    ("EBGaramond12-Bold.otf", "garamond", "serif", B, UP),
    ("EBGaramond12-Italic.otf", "garamond", "serif", R, IT),
    *_four("LinLibertine_R.otf LinLibertine_RB.otf LinLibertine_RI.otf LinLibertine_RBI.otf", "libertine", "serif"),
    ("LinBiolinum_R.otf", "libertine", "sans", R, UP),
    ("LinBiolinum_RB.otf", "libertine", "sans", B, UP),
    ("LinBiolinum_RI.otf", "libertine", "sans", R, IT),
    ("Cantarell-Regular.otf", "cantarell", "sans", R, UP),
    ("Cantarell-Bold.otf", "cantarell", "sans", B, UP),
    *_four("Lato-Regular.ttf Lato-Bold.ttf Lato-Italic.ttf Lato-BoldItalic.ttf", "lato", "sans"),
    ("Inconsolata.otf", "inconsolata", "mono", R, UP),
    ("FiraCode-Regular.ttf", "fira", "mono", R, UP),
    ("FiraCode-Bold.ttf", "fira", "mono", B, UP),
    *_four(
        "ComicNeue-Regular.otf ComicNeue-Bold.otf ComicNeue-Italic.otf ComicNeue-BoldItalic.otf", "comicneue", "display"
    ),
    *_four("Caladea-Regular.ttf Caladea-Bold.ttf Caladea-Italic.ttf Caladea-BoldItalic.ttf", "caladea", "serif"),
    *_four("Roboto-Regular.ttf Roboto-Bold.ttf Roboto-Italic.ttf Roboto-BoldItalic.ttf", "roboto", "sans"),
    *_four(
        "RobotoCondensed-Regular.ttf RobotoCondensed-Bold.ttf RobotoCondensed-Italic.ttf "
        "RobotoCondensed-BoldItalic.ttf",
        "roboto",
        "sans",
    ),
    *_four("CharisSIL-Regular.ttf CharisSIL-Bold.ttf CharisSIL-Italic.ttf CharisSIL-BoldItalic.ttf", "charis", "serif"),
    *_four("Andika-Regular.ttf Andika-Bold.ttf Andika-Italic.ttf Andika-BoldItalic.ttf", "andika", "sans"),
    ("DancingScript-Regular.otf", "dancingscript", "script", R, UP),
    ("DancingScript-Bold.otf", "dancingscript", "script", B, UP),
    ("lobster.otf", "lobster", "script", B, IT),  # Lobster Two Bold Italic
    ("Quicksand-Regular.ttf", "quicksand", "sans", R, UP),
    ("Quicksand-Bold.ttf", "quicksand", "sans", B, UP),
    ("Comfortaa-Regular.ttf", "comfortaa", "sans", R, UP),
    ("Comfortaa-Bold.ttf", "comfortaa", "sans", B, UP),
    *_four("Cabin-Regular.otf Cabin-Bold.otf Cabin-Italic.otf Cabin-BoldItalic.otf", "cabin", "sans"),
    *_four(
        "JetBrainsMono-Regular.ttf JetBrainsMono-Bold.ttf JetBrainsMono-Italic.ttf JetBrainsMono-BoldItalic.ttf",
        "jetbrains",
        "mono",
    ),
    *_four("Go-Regular.ttf Go-Bold.ttf Go-Italic.ttf Go-Bold-Italic.ttf", "go", "sans"),
    *_four("Go-Mono.ttf Go-Mono-Bold.ttf Go-Mono-Italic.ttf Go-Mono-Bold-Italic.ttf", "go", "mono"),
    *_four(
        "GilliusADF-Regular.otf GilliusADF-Bold.otf GilliusADF-Italic.otf GilliusADF-BoldItalic.otf", "gillius", "sans"
    ),
    *_four(
        "AccanthisADFStd-Regular.otf AccanthisADFStd-Bold.otf AccanthisADFStd-Italic.otf "
        "AccanthisADFStd-BoldItalic.otf",
        "accanthis",
        "serif",
    ),
]

# Design groups whose faces form the test split (never seen in training): a serif, sans and
# mono superfamily plus one more design of each of those kinds.
TEST_GROUPS = ("liberation", "charis", "cabin", "jetbrains")

STYLES = ("regular", "bold", "italic", "bold italic")
HELD_OUT_STYLES = ("bold", "italic", "bold italic")  # styles held out for some characters


def style_of(weight: str, slant: str) -> str:
    if slant == "italic":
        return "bold italic" if weight == "bold" else "italic"
    return weight


# ---------------------------------------------------------------------------
# Rendering parameters
# ---------------------------------------------------------------------------
RENDER_EM = 160  # FreeType size of the high-resolution rendering (px per em)
MARGIN_X = 0.15  # horizontal margin each side, fraction of the body height
MARGIN_Y = 0.10  # vertical margin above and below the body, fraction of the body height
LEVELS = 16  # coverage levels (anti-aliasing) of the stored images
NOTDEF_PROBES = ("\ue000", "\u0378", "\U0010fffd")  # unassigned / private: render as .notdef


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
def relative_luminance(rgb: tuple[int, int, int]) -> float:
    def lin(v: int) -> float:
        c = v / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (lin(v) for v in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast_ratio(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    hi, lo = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def colour_partners() -> dict[str, list[str]]:
    """Foreground name -> background names with enough contrast (palette order)."""
    return {
        fg: [bg for bg in COLOURS if bg != fg and contrast_ratio(COLOURS[fg], COLOURS[bg]) >= MIN_CONTRAST]
        for fg in COLOURS
    }


def dpkg_version(package: str) -> str:
    try:
        return subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "not installed"


def package_files(package: str) -> list[str]:
    try:
        out = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return sorted(f for f in out.splitlines() if f.lower().endswith((".ttf", ".otf")) and os.path.isfile(f))


def resolve_faces() -> list[dict]:
    """FACES -> dicts with path and package; exits with the apt-get command if files are missing."""
    where: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    for pkg in sorted(PACKAGES):
        for f in package_files(pkg):
            where[os.path.basename(f)].append((f, pkg))
    faces, missing = [], []
    for file, group, kind, weight, slant in FACES:
        hits = where.get(file, [])
        if len(hits) != 1:
            missing.append(file if not hits else f"{file} (in {len(hits)} places)")
            continue
        path, pkg = hits[0]
        faces.append(
            {
                "file": file,
                "path": path,
                "package": pkg,
                "group": group,
                "family": kind,
                "weight": weight,
                "slant": slant,
                "style": style_of(weight, slant),
                "split": "test" if group in TEST_GROUPS else "train",
            }
        )
    if missing:
        sys.exit(
            f"missing font files: {', '.join(missing)}\n"
            f"install: apt-get install -y --no-install-recommends {' '.join(sorted(PACKAGES))}"
        )
    faces.sort(key=lambda f: f["path"])
    return faces


class FaceRenderer:
    """High-resolution glyph masks of one face and its body (union of the ink boxes)."""

    def __init__(self, path: str):
        self.font = ImageFont.truetype(path, RENDER_EM, layout_engine=ImageFont.Layout.BASIC)
        family, style = self.font.getname()
        self.name = f"{family} {style}"
        self.masks: dict[str, Image.Image] = {}
        self.boxes: dict[str, tuple[int, int, int, int]] = {}
        notdefs = [np.asarray(self._draw(p)) for p in NOTDEF_PROBES]
        self.missing = []
        for ch in ALL_CHARS:
            im = self._draw(ch)
            arr = np.asarray(im)
            box = im.getbbox()
            if box is None or any(arr.shape == n.shape and np.array_equal(arr, n) for n in notdefs):
                self.missing.append(ch)
                continue
            self.masks[ch], self.boxes[ch] = im, box
        if self.boxes:
            self.top = min(b[1] for b in self.boxes.values())
            self.bottom = max(b[3] for b in self.boxes.values())

    def _draw(self, ch: str) -> Image.Image:
        im = Image.new("L", (3 * RENDER_EM, 3 * RENDER_EM), 0)
        ImageDraw.Draw(im).text((RENDER_EM, 2 * RENDER_EM), ch, font=self.font, fill=255, anchor="ls")
        return im

    def render(self, ch: str, body_px: int) -> np.ndarray:
        """Coverage levels 0..LEVELS-1, shape (H, W): ink box + margins wide, body + margins high."""
        left, _, right, _ = self.boxes[ch]
        scale = body_px / (self.bottom - self.top)
        mx, my = round(MARGIN_X * body_px), round(MARGIN_Y * body_px)
        width = math.ceil((right - left) * scale) + 2 * mx
        height = body_px + 2 * my
        x0 = (left + right) / 2 - width / (2 * scale)
        y0 = self.top - my / scale
        box = (x0, y0, x0 + width / scale, y0 + height / scale)
        cov = np.asarray(self.masks[ch].resize((width, height), Image.Resampling.BOX, box=box), np.float32)
        return np.rint(cov * ((LEVELS - 1) / 255.0)).astype(np.uint8)


def encode_png(levels: np.ndarray, fg: tuple[int, int, int], bg: tuple[int, int, int]) -> bytes:
    """Palette PNG: entry k = bg + (fg - bg) * k / (LEVELS - 1); exact, no quantization loss."""
    im = Image.fromarray(levels, "P")
    im.putpalette([round(b + (f - b) * k / (LEVELS - 1)) for k in range(LEVELS) for f, b in zip(fg, bg)])
    buf = io.BytesIO()
    im.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def dir_size(path: str, with_dirs: bool = False) -> tuple[int, int]:
    """(apparent bytes, allocated bytes) of the files under path; with_dirs adds the folders, as du does."""
    apparent = allocated = 0
    for root, _, files in os.walk(path):
        for f in [os.path.join(root, f) for f in files] + ([root] if with_dirs else []):
            st = os.stat(f)
            apparent += st.st_size
            allocated += st.st_blocks * 512
    return apparent, allocated


def histogram(values, edges, fmt="{:g}") -> list[tuple[str, int]]:
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        out.append((f"[{fmt.format(lo)}, {fmt.format(hi)})", sum(1 for v in values if lo <= v < hi)))
    out.append((f">= {fmt.format(edges[-1])}", sum(1 for v in values if v >= edges[-1])))
    return out


def caption(ch: str, family: str, weight: str, slant: str, fg: str, bg: str) -> str:
    style = f"{weight} italic" if slant == "italic" else weight
    return f"{style} {family} {CASE_WORD[case_of(ch)]} {ch}, {fg} on {bg}"


# ---------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------
def held_out_pairs(chars: str, seed: int, n_colour: int, n_style: int) -> tuple[dict[str, str], dict[str, str]]:
    """(char -> held-out foreground colour, char -> held-out style), on disjoint characters.

    Characters are drawn per case (digits, capitals, lowercase) in proportion to the case's size;
    colours and styles are dealt round-robin from a shuffled list, so each is held out about
    equally often."""
    rng = random.Random(f"glyphs:{seed}:held_out")
    pools = {c: [ch for ch in chars if case_of(ch) == c] for c in ("digit", "upper", "lower")}
    for p in pools.values():
        rng.shuffle(p)
    total = len(chars)
    take_colour = {c: round(n_colour * len(p) / total) for c, p in pools.items()}
    take_style = {c: round(n_style * len(p) / total) for c, p in pools.items()}
    colour_chars = [ch for c, p in pools.items() for ch in p[: take_colour[c]]]
    style_chars = [ch for c, p in pools.items() for ch in p[take_colour[c] : take_colour[c] + take_style[c]]]
    colours = list(COLOURS)
    rng.shuffle(colours)
    styles = list(HELD_OUT_STYLES)
    rng.shuffle(styles)
    held_fg = {ch: colours[i % len(colours)] for i, ch in enumerate(sorted(colour_chars, key=ALL_CHARS.index))}
    held_style = {ch: styles[i % len(styles)] for i, ch in enumerate(sorted(style_chars, key=ALL_CHARS.index))}
    return held_fg, held_style


def plan_images(chars, faces, args, held_fg, held_style) -> list[dict]:
    """One dict per image: split, char, face index, fg, bg, body_px (and held_out for combo)."""
    partners = colour_partners()
    train_faces = [i for i, f in enumerate(faces) if f["split"] == "train"]
    test_faces = [i for i, f in enumerate(faces) if f["split"] == "test"]
    plan: list[dict] = []
    used: set[tuple] = set()

    def draw(rng, split, ch, face_pool, fg_pool, n, extra=None):
        faces_order, fgs = [], []
        for k in range(n):
            if k % len(face_pool) == 0:  # a fresh shuffle per round: every face once per round
                faces_order = list(face_pool)
                rng.shuffle(faces_order)
            if k % len(fg_pool) == 0:
                fgs = list(fg_pool)
                rng.shuffle(fgs)
            face, fg = faces_order[k % len(face_pool)], fgs[k % len(fg_pool)]
            for _ in range(100):  # no two images with the same face, char, colours and size
                bg = rng.choice(partners[fg])
                body = rng.randint(args.body_min, args.body_max)
                key = (face, ch, fg, bg, body)
                if key not in used:
                    break
            used.add(key)
            item = {"split": split, "char": ch, "face": face, "fg": fg, "bg": bg, "body_px": body}
            if extra:
                item.update(extra)
            plan.append(item)

    for ch in chars:
        rng = random.Random(f"glyphs:{args.seed}:train:{ch}")
        pool = [i for i in train_faces if faces[i]["style"] != held_style.get(ch)]
        fgs = [c for c in COLOURS if c != held_fg.get(ch)]
        draw(rng, "train", ch, pool, fgs, args.train_per_class)
    for ch in chars:
        rng = random.Random(f"glyphs:{args.seed}:test:{ch}")
        draw(rng, "test", ch, test_faces, list(COLOURS), args.test_per_class)
    for ch, fg in held_fg.items():
        rng = random.Random(f"glyphs:{args.seed}:combo:{ch}:{fg}")
        draw(rng, "combo", ch, train_faces, [fg], args.combo_per_pair, {"held_out": "fg"})
    for ch, style in held_style.items():
        rng = random.Random(f"glyphs:{args.seed}:combo:{ch}:{style}")
        pool = [i for i in train_faces if faces[i]["style"] == style]
        draw(rng, "combo", ch, pool, list(COLOURS), args.combo_per_pair, {"held_out": "style"})
    return plan


# ---------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------
def build(args: argparse.Namespace) -> None:
    t0 = time.time()
    chars = "".join(ch for ch in ALL_CHARS if ch not in DROPPED_CHARS)
    faces = resolve_faces()
    print(f"{len(faces)} faces in {len({f['group'] for f in faces})} design groups, {len(chars)} classes")

    # Bodies and glyph presence (one pass over the faces, kept only as numbers).
    for f in faces:
        r = FaceRenderer(f["path"])
        if r.missing:
            sys.exit(f"{f['path']} has no glyph for {''.join(r.missing)!r}")
        f["font"] = r.name
        f["body_em"] = round((r.bottom - r.top) / RENDER_EM, 4)
        f["ascent_em"] = round((2 * RENDER_EM - r.top) / RENDER_EM, 4)
        f["descent_em"] = round((r.bottom - 2 * RENDER_EM) / RENDER_EM, 4)
    names = collections.Counter(f["font"] for f in faces)
    dupes = [n for n, k in names.items() if k > 1]
    if dupes:
        sys.exit(f"font names are not unique: {dupes}")

    held_fg, held_style = held_out_pairs(chars, args.seed, args.held_colour_pairs, args.held_style_pairs)
    plan = plan_images(chars, faces, args, held_fg, held_style)

    # File names: <class_dir>/<split>_<NNNN>.png, numbered in plan order within class and split.
    counters: collections.Counter = collections.Counter()
    for item in plan:
        key = (item["char"], item["split"])
        item["path"] = f"images/{class_dir(item['char'])}/{item['split']}_{counters[key]:04d}.png"
        counters[key] += 1

    out_dir = args.out
    img_dir = os.path.join(out_dir, "images")
    if os.path.isdir(img_dir):
        shutil.rmtree(img_dir)
    for ch in chars:
        os.makedirs(os.path.join(img_dir, class_dir(ch)), exist_ok=True)

    # Render, grouped by face (one high-resolution rendering per face).
    by_face = collections.defaultdict(list)
    for item in plan:
        by_face[item["face"]].append(item)
    png_bytes = []
    for fi in sorted(by_face):
        renderer = FaceRenderer(faces[fi]["path"])
        for item in by_face[fi]:
            levels = renderer.render(item["char"], item["body_px"])
            data = encode_png(levels, COLOURS[item["fg"]], COLOURS[item["bg"]])
            item["height"], item["width"] = levels.shape
            with open(os.path.join(out_dir, item["path"]), "wb") as fh:
                fh.write(data)
            png_bytes.append(len(data))
    print(f"rendered {len(plan)} images in {time.time() - t0:.1f}s")

    label = {ch: i for i, ch in enumerate(chars)}
    records = []
    for item in sorted(plan, key=lambda it: it["path"]):
        f = faces[item["face"]]
        ch = item["char"]
        rec = {
            "path": item["path"],
            "label": label[ch],
            "class_name": ch,
            "caption": caption(ch, f["family"], f["weight"], f["slant"], item["fg"], item["bg"]),
            "split": item["split"],
            "width": item["width"],
            "height": item["height"],
            "source": f"{f['package']}:{f['file']}",
            "char": ch,
            "case": case_of(ch),
            "font": f["font"],
            "family": f["family"],
            "weight": f["weight"],
            "slant": f["slant"],
            "fg": item["fg"],
            "bg": item["bg"],
        }
        if "held_out" in item:
            rec["held_out"] = item["held_out"]
        records.append(rec)
    check_splits(records, held_fg, held_style, faces)

    meta_path = os.path.join(out_dir, "metadata.jsonl")
    with open(meta_path, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n")
    with open(os.path.join(out_dir, "classes.json"), "w", encoding="utf-8") as fh:
        json.dump(list(chars), fh, indent=1)
        fh.write("\n")
    with open(meta_path, "rb") as fh:
        meta_sha = hashlib.sha256(fh.read()).hexdigest()

    stats = make_stats(args, chars, faces, records, held_fg, held_style, png_bytes, meta_sha)
    overview = os.path.join(REPO_ROOT, "docs", "glyphs_overview.png") if args.overview else None
    if overview:
        make_overview(out_dir, records, chars, overview, args.seed)
        print(f"wrote {overview}")
    # Sizes last but one: the stats and card files are small and counted at their final size by
    # a second pass (their own sizes change the total only by their digits).
    for _ in range(2):
        stats["size"] = size_report(out_dir)
        write_json(os.path.join(out_dir, "build_stats.json"), stats)
        write_data_card(out_dir, stats)
    print(
        f"{len(records)} images ({stats['counts']['splits']}); data/glyphs: "
        f"{stats['size']['apparent_bytes'] / 2**20:.2f} MiB apparent, "
        f"{stats['size']['allocated_bytes'] / 2**20:.2f} MiB allocated; {time.time() - t0:.1f}s"
    )


def check_splits(records, held_fg, held_style, faces) -> None:
    """The promises of the splits, checked on the final records."""
    font_split = {f["font"]: f["split"] for f in faces}
    style = {f["font"]: f["style"] for f in faces}
    for r in records:
        if r["split"] == "train":
            assert font_split[r["font"]] == "train", r
            assert held_fg.get(r["char"]) != r["fg"], r
            assert held_style.get(r["char"]) != style[r["font"]], r
        elif r["split"] == "test":
            assert font_split[r["font"]] == "test", r
        else:
            assert font_split[r["font"]] == "train", r
            assert held_fg.get(r["char"]) == r["fg"] or held_style.get(r["char"]) == style[r["font"]], r
    train = [r for r in records if r["split"] == "train"]
    for key in ("char", "fg", "bg", "family", "weight", "slant"):
        seen = {r[key] for r in train}
        assert all(r[key] in seen for r in records), key
    train_styles = {style[r["font"]] for r in train}
    assert set(STYLES) <= train_styles


def write_json(path, obj) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=1, ensure_ascii=False)
        fh.write("\n")


def size_report(out_dir) -> dict:
    apparent, allocated = dir_size(out_dir)
    n_files = sum(len(files) for _, _, files in os.walk(out_dir))
    img_apparent, img_allocated = dir_size(os.path.join(out_dir, "images"))
    du_apparent, du_allocated = dir_size(out_dir, with_dirs=True)
    return {
        "files": n_files,
        "apparent_bytes": apparent,
        "allocated_bytes": allocated,
        "du_apparent_bytes": du_apparent,
        "du_allocated_bytes": du_allocated,
        "images_apparent_bytes": img_apparent,
        "images_allocated_bytes": img_allocated,
        "metadata_bytes": os.path.getsize(os.path.join(out_dir, "metadata.jsonl")),
    }


def make_stats(args, chars, faces, records, held_fg, held_style, png_bytes, meta_sha) -> dict:
    splits = ("train", "test", "combo")
    per_class = {
        ch: {s: sum(1 for r in records if r["char"] == ch and r["split"] == s) for s in splits} for ch in chars
    }
    per_font = collections.Counter((r["font"], r["split"]) for r in records)
    attrs = {}
    for key in ("case", "family", "weight", "slant", "fg", "bg"):
        attrs[key] = {
            s: dict(sorted(collections.Counter(r[key] for r in records if r["split"] == s).items())) for s in splits
        }
    font_style = {f["font"]: f["style"] for f in faces}
    attrs["style"] = {
        s: dict(sorted(collections.Counter(font_style[r["font"]] for r in records if r["split"] == s).items()))
        for s in splits
    }
    areas = [r["width"] * r["height"] for r in records]
    aspects = [r["width"] / r["height"] for r in records]
    versions = {p: dpkg_version(p) for p in sorted(PACKAGES)}
    stats = {
        "n_images": len(records),
        "n_classes": len(chars),
        "classes": list(chars),
        "dropped_chars": list(DROPPED_CHARS),
        "metadata_sha256": meta_sha,
        "command": "python scripts/build_glyph_dataset.py" + "".join(f" {a}" for a in args.argv),
        "params": {
            "seed": args.seed,
            "train_per_class": args.train_per_class,
            "test_per_class": args.test_per_class,
            "combo_per_pair": args.combo_per_pair,
            "held_colour_pairs": args.held_colour_pairs,
            "held_style_pairs": args.held_style_pairs,
            "body_px": [args.body_min, args.body_max],
            "margin_x_of_body": MARGIN_X,
            "margin_y_of_body": MARGIN_Y,
            "render_em_px": RENDER_EM,
            "coverage_levels": LEVELS,
            "min_contrast_ratio": MIN_CONTRAST,
            "test_groups": list(TEST_GROUPS),
        },
        "software": {
            "python": sys.version.split()[0],
            "pillow": Image.__version__,
            "freetype": features.version("freetype2"),
            "zlib": features.version("zlib"),
            "numpy": np.__version__,
        },
        "colours": {n: {"rgb": list(c), "luminance": round(relative_luminance(c), 4)} for n, c in COLOURS.items()},
        "colour_pairs": colour_partners(),
        "held_out_pairs": {
            "fg": [{"char": ch, "fg": fg} for ch, fg in held_fg.items()],
            "style": [{"char": ch, "style": st} for ch, st in held_style.items()],
        },
        "packages": {
            p: {"version": versions[p], "licence": PACKAGES[p][0], "copyright": PACKAGES[p][1]} for p in PACKAGES
        },
        "fonts": [
            {
                "font": f["font"],
                "file": f["path"],
                "package": f["package"],
                "group": f["group"],
                "family": f["family"],
                "weight": f["weight"],
                "slant": f["slant"],
                "split": f["split"],
                "body_em": f["body_em"],
                "ascent_em": f["ascent_em"],
                "descent_em": f["descent_em"],
                "images": {s: per_font[(f["font"], s)] for s in splits if per_font[(f["font"], s)]},
            }
            for f in faces
        ],
        "counts": {
            "splits": {s: sum(1 for r in records if r["split"] == s) for s in splits},
            "per_class": per_class,
        },
        "attributes": attrs,
        "sizes": {
            "area_quantiles": {f"p{q}": float(np.percentile(areas, q)) for q in (0, 10, 25, 50, 75, 90, 100)},
            "area_hist": histogram(areas, [0, 400, 576, 784, 1024, 1296, 1600, 1936, 2304, 2704]),
            "aspect_hist": histogram(aspects, [0, 0.25, 0.33, 0.5, 0.67, 0.9, 1.11, 1.5], "{:.2f}"),
            "aspect_range": [round(min(aspects), 3), round(max(aspects), 3)],
            "width_range": [min(r["width"] for r in records), max(r["width"] for r in records)],
            "height_range": [min(r["height"] for r in records), max(r["height"] for r in records)],
            "mean_png_bytes": round(float(np.mean(png_bytes)), 1),
            "both_sides_over_32": sum(1 for r in records if r["width"] > 32 and r["height"] > 32),
        },
    }
    amb_path = os.path.join(args.out, "ambiguity.json")
    if os.path.isfile(amb_path):
        with open(amb_path, encoding="utf-8") as fh:
            amb = json.load(fh)
        amb["matches_this_build"] = amb.get("metadata_sha256") == meta_sha
        stats["ambiguity"] = amb
    return stats


# ---------------------------------------------------------------------------
# Contact sheet
# ---------------------------------------------------------------------------
def _ui_font(size: int):
    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            pass
    return ImageFont.load_default()


def make_overview(out_dir, records, chars, path, seed, per_class=9, zoom=2, blocks_per_row=2):
    """Random examples of every class (all splits), at native size x zoom (nearest neighbour)."""
    rng = random.Random(f"glyphs:{seed}:overview")
    by_class = collections.defaultdict(list)
    for r in records:
        by_class[r["char"]].append(r)
    pad, label_w = 6, 70
    cell_h = max(r["height"] for r in records) * zoom
    picks = {}
    for ch in chars:
        ex = list(by_class[ch])
        rng.shuffle(ex)
        picks[ch] = ex[:per_class]
    block_w = label_w + max(sum(r["width"] * zoom + pad for r in p) for p in picks.values())
    rows = math.ceil(len(chars) / blocks_per_row)
    W = pad + blocks_per_row * (block_w + pad)
    H = pad + rows * (cell_h + pad) + 28
    sheet = Image.new("RGB", (W, H), (236, 236, 236))
    d = ImageDraw.Draw(sheet)
    big, small = _ui_font(22), _ui_font(12)
    for i, ch in enumerate(chars):
        row, col = divmod(i, blocks_per_row)
        x, y = pad + col * (block_w + pad), pad + row * (cell_h + pad)
        d.text((x + 4, y + cell_h // 2 - 16), ch, fill=(0, 0, 0), font=big)
        d.text((x + 4, y + cell_h // 2 + 10), f"{len(by_class[ch])}", fill=(90, 90, 90), font=small)
        x += label_w
        for r in picks[ch]:
            im = Image.open(os.path.join(out_dir, r["path"])).convert("RGB")
            im = im.resize((im.width * zoom, im.height * zoom), Image.Resampling.NEAREST)
            sheet.paste(im, (x, y + (cell_h - im.height) // 2))
            x += im.width + pad
    d.text(
        (pad, H - 22),
        f"glyph dataset: {len(records)} images, {len(chars)} classes; random examples of every split, "
        f"native size x{zoom} (nearest neighbour); number = images of the class",
        fill=(60, 60, 60),
        font=small,
    )
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sheet.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


# ---------------------------------------------------------------------------
# Data card
# ---------------------------------------------------------------------------
LICENCE_QUOTES = [
    (
        "OFL-1.1 / OFL-1.0 (Noto, EB Garamond, Linux Libertine, Cantarell, Lato, Inconsolata, Fira Code, "
        "Comic Neue, Caladea, Charis SIL, Andika, Dancing Script, Lobster, Quicksand, Comfortaa, Cabin)",
        "fonts-crosextra-caladea",
        "The OFL allows the licensed fonts to be used, studied, modified and redistributed freely as long as "
        "they are not sold by themselves. The fonts, including any derivative works, can be bundled, embedded, "
        "redistributed and/or sold with any software provided that any reserved names are not used by derivative "
        "works.  The fonts and derivatives, however, cannot be released under any other type of license.  The "
        "requirement for fonts to remain under this license does not apply to any document created using the "
        "fonts or their derivatives.",
    ),
    (
        "Bitstream Vera licence (DejaVu)",
        "fonts-dejavu-core",
        "Copyright (c) 2003 by Bitstream, Inc. All Rights Reserved. Bitstream Vera is a trademark of Bitstream, "
        "Inc. DejaVu changes are in public domain. [...] Permission is hereby granted, free of charge, to any "
        'person obtaining a copy of the fonts accompanying this license ("Fonts") and associated documentation '
        'files (the "Font Software"), to reproduce and distribute the Font Software, including without '
        "limitation the rights to use, copy, merge, publish, distribute, and/or sell copies of the Font Software, "
        "and to permit persons to whom the Font Software is furnished to do so, subject to the following "
        "conditions: The above copyright and trademark notices and this permission notice shall be included in "
        "all copies of one or more of the Font Software typefaces.",
    ),
    (
        "GPL with font exception (Liberation; GNU FreeFont; Linux Libertine, dual with OFL; ADF Gillius and Accanthis)",
        "fonts-liberation",
        "You are licensed to use, modify, copy, and distribute the Software pursuant to the GNU General Public "
        "License v.2 with the following exceptions: (a) As a special exception, if you create a document which "
        "uses this font, and embed this font or unaltered portions of this font into the document, this font "
        "does not by itself cause the resulting document to be covered by the GNU General Public License.",
    ),
    (
        "AGPL-3 with font exception (URW base35: Nimbus, C059, P052, URW Bookman, URW Gothic, Z003)",
        "fonts-urw-base35",
        "The font and related files in this directory are distributed under the GNU AFFERO GENERAL PUBLIC "
        "LICENSE Version 3 (see the file COPYING), with the following exemption: As a special exception, "
        "permission is granted to include these font programs in a Postscript or PDF file that consists of a "
        "document that contains text to be displayed or printed using this font, regardless of the conditions "
        "or license applying to the document itself.",
    ),
    (
        "Apache-2.0 (Roboto, JetBrains Mono)",
        "fonts-jetbrains-mono",
        'Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in '
        "compliance with the License. [...] Unless required by applicable law or agreed to in writing, software "
        'distributed under the License is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF '
        "ANY KIND, either express or implied.",
    ),
    (
        "BSD-3-Clause (Go fonts)",
        "fonts-go",
        "Copyright (c) 2016 Bigelow & Holmes Inc.. All rights reserved. [...] Redistribution and use in source "
        "and binary forms, with or without modification, are permitted provided that the following conditions "
        "are met: 1. Redistributions of source code must retain the above copyright notice, this list of "
        "conditions and the following disclaimer. 2. Redistributions in binary form must reproduce the above "
        "copyright notice, this list of conditions and the following disclaimer in the documentation and/or "
        "other materials provided with the distribution. [...]",
    ),
]


def _table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if h.startswith("#") else "---" for h in header)]
    lines[1] += "|"
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _ambiguity_section(stats) -> str:
    amb = stats.get("ambiguity")
    if not amb:
        return (
            "Not measured for this build: run `python scripts/measure_glyph_ambiguity.py` (needs torch) and "
            "rebuild to copy its result here."
        )
    lines = []
    if not amb.get("matches_this_build"):
        lines.append(
            "**Note: measured on a different `metadata.jsonl`** "
            f"(sha256 `{amb.get('metadata_sha256', '?')[:12]}`, this build `{stats['metadata_sha256'][:12]}`).\n"
        )
    lines.append("Method (`scripts/measure_glyph_ambiguity.py`, output in `ambiguity.json`): " + amb.get("method", ""))
    runs = amb.get("runs", [])
    for name in dict.fromkeys(r["name"] for r in runs):
        group = [r for r in runs if r["name"] == name]
        first = group[0]
        flips = (
            "The network is trained with random horizontal flips (probability 1/2), as `fitv2`'s token loader "
            "and evaluation classifier do."
            if first.get("flip")
            else "No flips."
        )
        lines.append(
            f"\n### {name}\n\nCommand: `{first['command']}`" + (f" ({first['note']})" if first.get("note") else "")
        )
        lines.append("\n" + flips)
        for run in group:
            lines.append(
                f"\n* `{run['eval_split']}` split ({run['n_eval']} images; {run['n_classes']} classes, chance "
                f"{100 / run['n_classes']:.1f}%): accuracy **{run['accuracy'] * 100:.2f}%**; lowest per-class "
                "accuracies: " + ", ".join(f"`{c}` {a * 100:.0f}%" for c, a in run["worst_classes"][:6]) + "; "
                "confusions (true -> predicted: images): "
                + ", ".join(f"`{t}`->`{p}`: {n}" for t, p, n, _ in run["top_confusions"][:8])
                + "."
            )
        test = next((r for r in group if r["eval_split"] == "test"), None)
        if test and test.get("group_accuracy"):
            lines.append(
                "\nLook-alike groups on the `test` split: accuracy of the exact class, and of 'any class of the "
                "group' (an error outside the group counts as wrong in both):\n"
            )
            lines.append(
                _table(
                    ["group", "#images", "exact class", "within the group"],
                    [
                        (f"`{g['group']}`", g["n"], f"{g['exact'] * 100:.1f}%", f"{g['within'] * 100:.1f}%")
                        for g in test["group_accuracy"]
                    ],
                )
            )
    clf = amb.get("fitv2_train_classifier")
    if clf:
        lines.append("\n### `fitv2 train-classifier` (the project's evaluation classifier)\n")
        lines.append(clf["note"][0].upper() + clf["note"][1:] + ":\n")
        for r in clf["runs"]:
            lines.append(
                f"* `{r['command']}`: {r['epochs_run']} epochs in {r['seconds']:.0f} s, test accuracy "
                f"**{r['test_accuracy'] * 100:.1f}%** (at 16x16: {r['test_accuracy_by_side']['16'] * 100:.1f}%, "
                f"42x42: {r['test_accuracy_by_side']['42'] * 100:.1f}%); most frequent confusions: "
                + ", ".join(f"`{t}`->`{p}`: {n}" for t, p, n in r["top_confusions_test"])
                + "."
            )
    plain = [r for r in runs if r["eval_split"] == "test" and not r.get("flip")]
    flipped = [r for r in runs if r["eval_split"] == "test" and r.get("flip")]
    if plain:
        r = plain[0]
        groups = [g for g in r.get("group_accuracy", []) if g["exact"] < 0.99]
        kept = "every class is kept" if not DROPPED_CHARS else f"dropped: {', '.join(DROPPED_CHARS)}"
        text = (
            f"\n**Decision: {kept}.**  On fonts never seen in training the small CNN classifies "
            f"{r['accuracy'] * 100:.2f}% of the test images correctly (the downstream requirement is >= 95%)"
        )
        if groups:
            text += "; its errors concentrate in the look-alike groups " + ", ".join(
                f"`{g['group']}` ({g['exact'] * 100:.0f}% exact, {g['within'] * 100:.0f}% within)" for g in groups
            )
        text += (
            ".  These characters share one shape in some fonts only: the errors stay within their group, "
            "and the overall accuracy is well above the requirement, so no class is dropped."
        )
        if flipped:
            f = flipped[0]
            text += (
                f"  Trained with random horizontal flips the same network reaches {f['accuracy'] * 100:.2f}%, "
                "and mirror-image pairs join the confusions (`b`/`d`, `p`/`q`, see below): train on this "
                "dataset without flips."
            )
        lines.insert(0 if amb.get("matches_this_build") else 1, text.lstrip("\n") + "\n")
    return "\n".join(lines)


def write_data_card(out_dir, stats) -> None:
    s = stats
    counts = s["counts"]["splits"]
    size = s["size"]
    p = s["params"]
    fonts = s["fonts"]
    groups = collections.OrderedDict()
    for f in fonts:
        groups.setdefault((f["split"], f["group"]), []).append(f)
    train_groups = sorted(g for (sp, g) in groups if sp == "train")
    test_groups = sorted(g for (sp, g) in groups if sp == "test")

    def group_rows(split):
        rows = []
        for (sp, g), fs in sorted(groups.items(), key=lambda kv: kv[0][1]):
            if sp != split:
                continue
            pk = sorted({f["package"] for f in fs})
            kinds = ", ".join(sorted({f["family"] for f in fs}))
            names = "; ".join(f["font"] for f in fs)
            rows.append((f"`{g}`", kinds, len(fs), names, ", ".join(f"`{x}`" for x in pk)))
        return rows

    pkg_rows = [(f"`{n}`", f"`{v['version']}`", v["licence"], v["copyright"]) for n, v in s["packages"].items()]
    class_rows = []
    for i, ch in enumerate(s["classes"]):
        c = s["counts"]["per_class"][ch]
        class_rows.append((i, f"`{ch}`", f"`{class_dir(ch)}`", c["train"], c["test"], c["combo"]))
    held_fg_rows = [(f"`{x['char']}`", x["fg"]) for x in s["held_out_pairs"]["fg"]]
    held_st_rows = [(f"`{x['char']}`", x["style"]) for x in s["held_out_pairs"]["style"]]
    attr_rows = []
    for key in ("family", "style", "weight", "slant", "fg", "bg", "case"):
        for split in ("train", "test", "combo"):
            vals = s["attributes"][key][split]
            attr_rows.append((f"`{key}`", split, ", ".join(f"{k} {v}" for k, v in vals.items())))
    colour_rows = [
        (f"`{n}`", "#{:02x}{:02x}{:02x}".format(*c["rgb"]), c["luminance"], ", ".join(s["colour_pairs"][n]))
        for n, c in s["colours"].items()
    ]
    quotes = "\n\n".join(
        f"* **{title}**, from `/usr/share/doc/{pkg}/copyright`:\n\n  > {text}" for title, pkg, text in LICENCE_QUOTES
    )
    example = next(r for r in _records(out_dir) if r["split"] == "train")
    q = s["sizes"]["area_quantiles"]
    n_over = s["sizes"]["both_sides_over_32"]
    n_decorative = sum(1 for f in fonts if f["family"] in ("script", "display"))
    n_groups, n_test_faces = len(train_groups) + len(test_groups), sum(1 for f in fonts if f["split"] == "test")
    wr, hr, ar = s["sizes"]["width_range"], s["sizes"]["height_range"], s["sizes"]["aspect_range"]
    text = f"""# Data card: glyph dataset (`data/glyphs/`)

Digits and Latin letters rendered from freely licensed fonts, each image one character in one
font face, one foreground colour on one background colour, at the glyph's **native aspect
ratio** (W and M wide, l, i and 1 tall and thin).  Class = the character.  Embedded in the
repository for the FiTv2 demo, the evaluation classifier and the quality benchmarks; every
image also carries its attributes (font, family kind, weight, slant, colours), so a benchmark
can score each of them, and a `combo` split holds combinations never seen in training.

* **{s["n_images"]} images, {s["n_classes"]} classes**: {counts["train"]} `train`, {counts["test"]} `test`
  (fonts never seen in training), {counts["combo"]} `combo` (combinations held out of training).
* Balanced: {p["train_per_class"]} train and {p["test_per_class"]} test images per class;
  {p["combo_per_pair"]} combo images per held-out pair.
* {len(fonts)} font faces in {n_groups} design groups from {len(s["packages"])} Debian packages;
  {n_test_faces} faces ({len(test_groups)} groups) only in the test split.
* Palette PNGs of at most {p["coverage_levels"]} colours (load with `Image.open(path).convert("RGB")`),
  {wr[0]}-{wr[1]} px wide, {hr[0]}-{hr[1]} px high, median area {q["p50"]:.0f} px (about
  {math.sqrt(q["p50"]):.0f}x{math.sqrt(q["p50"]):.0f}), width/height from {ar[0]} to {ar[1]}.
* Size: **{size["apparent_bytes"] / 2**20:.2f} MiB** of file data in `data/glyphs/` ({size["files"]} files:
  images {size["images_apparent_bytes"] / 2**20:.2f} MiB, mean {s["sizes"]["mean_png_bytes"]:.0f} bytes per
  PNG; `metadata.jsonl` {size["metadata_bytes"] / 2**20:.2f} MiB); counting the folders too,
  {size["du_apparent_bytes"] / 2**20:.2f} MiB (`du -sh --apparent-size data/glyphs`).  A file system with
  4 KiB blocks allocates {size["du_allocated_bytes"] / 2**20:.1f} MiB (`du -sh data/glyphs`: a block per
  small file); git stores the contents, about the apparent size.

## Files

* `images/<class_dir>/<split>_<NNNN>.png`: the images.  Class folders are `digit_<c>`, `upper_<C>` and
  `lower_<c>` (unique on case-insensitive file systems); `NNNN` numbers the images of a class within a split.
* `metadata.jsonl`: one JSON object per image, sorted by path (compact separators), e.g.

  ```json
  {json.dumps(example, ensure_ascii=False)}
  ```

  `path` is relative to `data/glyphs/`; `label` indexes `classes.json`; `class_name` and `char` are the
  character; `case` is `digit`/`upper`/`lower`; `font` is the face's name; `family` its kind
  (`serif`, `sans`, `mono`, `script`, `display`); `weight` `regular`/`bold`; `slant` `upright`/`italic`
  (oblique faces count as italic); `fg`/`bg` colour names; `source` is `<Debian package>:<font file>`;
  combo rows also have `held_out`: `fg` or `style`, the kind of combination they hold.
* `classes.json`: the class names (the characters), index = `label`.
* `build_stats.json`: parameters, software versions, every face (file, package, design group, kind,
  weight, slant, split, body metrics, image counts), packages with version and licence, colours and
  their allowed pairs, held-out pairs, counts per class and split, attribute counts per split, size
  histograms, file sizes and the ambiguity measurement.
* `ambiguity.json`: the output of `scripts/measure_glyph_ambiguity.py` (see below).
* Contact sheet: `docs/glyphs_overview.png`.

## Loading

```python
import json
from PIL import Image

root = "data/glyphs"
classes = json.load(open(f"{{root}}/classes.json"))
records = [json.loads(line) for line in open(f"{{root}}/metadata.jsonl")]
train = [r for r in records if r["split"] == "train"]
image = Image.open(f"{{root}}/{{train[0]['path']}}").convert("RGB")  # palette PNG
label, caption = train[0]["label"], train[0]["caption"]
```

With the project's tools: `fitv2 prepare data/glyphs/metadata.jsonl OUT --split train` (and
`--split test`, `--split combo`).  **Do not train on horizontally flipped glyphs**: a mirrored `b`
is a `d` (also `p`/`q`) and most mirrored letters are not letters; `fitv2`'s token loader and its
evaluation classifier flip at random (see Known limitations).

## How it was built

```
apt-get install -y --no-install-recommends {" ".join(sorted(s["packages"]))}
{s["command"]}
```

The script (Python {s["software"]["python"]}, Pillow {s["software"]["pillow"]}, FreeType {s["software"]["freetype"]},
zlib {s["software"]["zlib"]}) is deterministic: a fixed face table, seeded `random.Random`
(seed {p["seed"]}), a fixed rendering order.  Steps:

1. **Faces.** Each face of the table is found by file name in its package (`dpkg -L`) and checked
   to have all 62 characters (none may render as the .notdef box).
2. **Body.** Each face renders the 62 characters with FreeType at {p["render_em_px"]} px per em
   (anti-aliased, anchored at the left end of the baseline).  The union of their ink boxes vertically
   is the face's *body*: from its highest ascender or capital to its lowest descender.
3. **Crop.** An image spans the glyph's own ink box horizontally plus a margin of
   {p["margin_x_of_body"]} x body height on each side, and the face's body vertically plus
   {p["margin_y_of_body"]} x body height above and below.  All characters of a face therefore
   share the baseline position and the scale: `o`/`O`, `c`/`C`, `s`/`S`, `x`/`X`, `p`/`P`, ... differ
   by height and position, and the width follows the glyph (native aspect ratio).
4. **Size.** The body is {p["body_px"][0]}-{p["body_px"][1]} px high (uniform, per image), so the
   images are {s["sizes"]["height_range"][0]}-{s["sizes"]["height_range"][1]} px high; the
   high-resolution rendering is box-filtered (area average) to that size: anti-aliasing.
5. **Colour.** Coverage is quantized to {p["coverage_levels"]} levels and mapped linearly from the
   background to the foreground colour; the PNG palette holds exactly these colours, so the stored
   file is the rendering without further loss (`optimize=True`).  Colours are drawn from the palette
   below; a (foreground, background) pair is used only if its WCAG 2 contrast ratio is at least
   {p["min_contrast_ratio"]} (the minimum for large text), which rules out e.g. red on green,
   yellow on white or blue on black.  Foreground colours are dealt round-robin per class (balanced);
   the background is uniform among the foreground's allowed partners.
6. **Faces per image.** Faces are dealt round-robin per class and split from a fresh shuffle each
   round, so every eligible face draws about the same number of images of each class.
7. **Captions** are built from the attributes: `<weight>[ italic] <family> <capital|lowercase|digit>
   <char>, <fg> on <bg>`, e.g. `bold italic serif capital G, red on white`, `regular sans lowercase a,
   white on blue`, `regular mono digit 7, black on yellow`.

### Colours

{
        _table(
            [
                "name",
                "sRGB",
                "rel. luminance",
                "allowed backgrounds (contrast >= " + str(p["min_contrast_ratio"]) + ")",
            ],
            colour_rows,
        )
    }

## Splits

* **`train`**: the faces of the {len(train_groups)} training design groups; all combinations except the
  held-out pairs below.
* **`test`**: only the faces of the design groups {", ".join(f"`{g}`" for g in test_groups)}:
  fonts **never seen in training**.  A design group holds a design and its clones and derivatives
  (e.g. `helvetica` = Nimbus Sans, Nimbus Sans Narrow and GNU FreeSans, which derives from Nimbus Sans;
  `times` = Nimbus Roman and FreeSerif; `courier` = Nimbus Mono PS and FreeMono), so no test face is a
  copy of a training design.  The test fonts are serif, sans and mono faces (regular, bold, italic,
  bold italic); the `script` and `display` kinds occur only in training.  Test images use every colour
  pair and style, including the held-out combinations (the point of this split is the font).
* **`combo`**: combinations **held out of training**: the (character, foreground colour) and the
  (character, style) pairs below, {p["combo_per_pair"]} images each, rendered with the **training
  faces** (the combination is new, the fonts are not).  Each of these characters, colours and styles
  occurs in `train` with other partners (checked by the build).  The characters of the two lists are
  disjoint.  `held_out` in a row says which kind of pair it holds; the lists are also in
  `build_stats.json` (`held_out_pairs`).  A text-to-image benchmark can prompt e.g. the caption of a combo
  row ("... capital G, red on white" where no red `G` was seen in training) and score the attribute.

Held-out (character, foreground colour) pairs: in `train` this character never has this foreground
colour (it has every other one, and every other character has this one):

{_table(["char", "held-out fg"], held_fg_rows)}

Held-out (character, style) pairs: in `train` this character never appears in this style (style =
weight + slant: `bold` is bold upright, `italic` regular italic):

{_table(["char", "held-out style"], held_st_rows)}

## Fonts, packages and licences

Training design groups:

{_table(["group", "kind", "# faces", "faces", "packages"], group_rows("train"))}

Test design groups (never in training):

{_table(["group", "kind", "# faces", "faces", "packages"], group_rows("test"))}

Packages (version installed at build time, licence and copyright holders of the fonts, from
`/usr/share/doc/<package>/copyright`):

{_table(["package", "version", "licence", "copyright"], pkg_rows)}

Every package's licence allows redistribution; the images here are renderings of single glyphs,
not font files.  The key statements, quoted from the packages' copyright files:

{quotes}

The full texts are in `/usr/share/doc/<package>/copyright` on a Debian system with the package
installed (and in the upstream projects).  The `source` field of every record names the package and
font file an image was rendered from.

## Ambiguous classes

Some characters share one shape in many fonts (capital `I`, lowercase `l` and digit `1` in a plain
sans; `O` and `0`).  The body crop keeps heights (so `o`/`O` differ), but `I`/`l` may differ only by
a few percent of height, and `O`/`0` only by width.  Measurement on this build:

{_ambiguity_section(s)}

## Counts per class and split

{_table(["#label", "class", "folder", "#train", "#test", "#combo"], class_rows)}

## Attribute counts per split

{_table(["attribute", "split", "counts"], attr_rows)}

## Image sizes

Area quantiles (pixels): {", ".join(f"{k}={v:.0f}" for k, v in q.items())}.

{_table(["area (px)", "#images"], s["sizes"]["area_hist"])}

{_table(["width / height", "#images"], s["sizes"]["aspect_hist"])}

## Known limitations

* **Rendered, not photographed or handwritten**: flat colours, perfect anti-aliased edges, no noise,
  texture, rotation or perspective; one glyph per image.  A model of this data learns typefaces.
* **Horizontal flips change the class**: `b`/`d`, `p`/`q` are mirror images of each other in many
  fonts, and a mirrored letter is usually no letter.  `fitv2 prepare` stores each image with its mirror
  image and the token loader picks one at random; the evaluation classifier (`fitv2 train-classifier`)
  also flips at random.  On this dataset, flips should be turned off (the dataset cannot do that).
* **Centre crops cut glyphs**: FiTv2's `mixed` data mode (the `fitv2 train` default) replaces an
  image whose sides both exceed the budget side, with probability 1/2, by a square centre crop.  At
  the demo's 32-px budget that concerns {n_over} images ({n_over / s["n_images"] * 100:.0f}%), mostly wide
  letters (`W`, `M`, `m`, `w`), whose crop loses the body's top and bottom margin or the glyph's sides.
  `fitv2 train --data-mode flexible` (resize only) keeps every glyph whole.
* **Look-alike classes** (see "Ambiguous classes"): in some fonts `I`/`l`/`1` or `O`/`0` are one shape,
  so a perfect classifier does not exist; the measured accuracy shows how much this costs.
* **Font coverage**: {len(fonts)} faces from {len(s["packages"])} Debian packages, mostly text faces of
  Western type design; the `script` and `display` kinds are few ({n_decorative} faces) and not in the
  test split.  Several training faces are close relatives (clones of the same
  classic design in one design group).
* **Sizes**: bodies of {p["body_px"][0]}-{p["body_px"][1]} px: the images are small (the demo's
  32x32-pixel budget); fine serifs and hairlines of high-contrast faces are blurred to grey.
* **Colour names** name exact sRGB values (table above); colour pairs with low contrast are never used,
  so e.g. `orange` only pairs with `black` (as foreground or background).
* **Weights** are two classes: faces named Light, Book or Medium (URW Bookman Light, URW Gothic Book,
  Inconsolata Medium, Z003 Medium Italic) count as regular, Demi as bold; widths (condensed, narrow)
  are not an attribute.
* Exact reproduction needs the same package versions and the same Pillow/FreeType/zlib versions.
"""
    with open(os.path.join(out_dir, "DATA_CARD.md"), "w", encoding="utf-8") as fh:
        fh.write(text)


def _records(out_dir):
    with open(os.path.join(out_dir, "metadata.jsonl"), encoding="utf-8") as fh:
        for line in fh:
            yield json.loads(line)


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(REPO_ROOT, "data", "glyphs"), help="output directory")
    ap.add_argument("--train-per-class", type=int, default=160)
    ap.add_argument("--test-per-class", type=int, default=48)
    ap.add_argument("--combo-per-pair", type=int, default=20)
    ap.add_argument("--held-colour-pairs", type=int, default=24, help="(character, fg colour) pairs held out")
    ap.add_argument("--held-style-pairs", type=int, default=24, help="(character, style) pairs held out")
    ap.add_argument("--body-min", type=int, default=28, help="smallest body height in pixels")
    ap.add_argument("--body-max", type=int, default=40, help="largest body height in pixels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-overview", dest="overview", action="store_false", help="skip docs/glyphs_overview.png")
    args = ap.parse_args(argv)
    args.argv = []  # the command line without --out (a local path)
    skip = False
    for a in argv:
        if skip or a.startswith("--out"):
            skip = a == "--out"
            continue
        args.argv.append(a)
    os.makedirs(args.out, exist_ok=True)
    build(args)


if __name__ == "__main__":
    main()
