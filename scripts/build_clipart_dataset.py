#!/usr/bin/env python3
"""Build the embedded public-domain clipart dataset in ``data/clipart/``.

Source: the Debian package ``openclipart-png`` (Open Clip Art Library 0.18,
public domain), installed with ``apt-get install -y openclipart-png``.  The
PNGs live under ``/usr/share/openclipart/png/<category>/...``.

The script is deterministic: file lists are sorted, all random choices use
``random.Random`` seeded from ``--seed`` (and the class name via CRC32), and
the worker pool returns results in input order.  Re-running it with the same
package version, Pillow/zlib version and arguments reproduces the dataset
byte for byte.

Pipeline (each dropped image is counted under the first reason that applies):

1. list every ``*.png`` under ``--src`` (sorted) and map its folder to a class
   (top-level categories; tiny ones merged; ``signs_and_symbols/flags`` and
   ``recreation/games`` promoted to their own classes; see ``CLASS_RULES``);
2. drop generated images by path (the ~1,400 ``shapes/stars/star_NNptMMstep``
   spirographs, ``special/gradients``, ``special/patterns``);
3. drop exact duplicate files (same bytes; the package ships many files twice);
4. drop tiny sources (area < 48*48, e.g. the small computer icons);
5. decode, composite transparency onto white, trim the uniform background
   margin (``--no-trim`` disables it), downscale to at most ``--area-budget``
   pixels keeping the aspect ratio (never upscale) and drop blank, near-uniform
   and single-colour images, images with aspect ratio > 4:1 and images whose
   short side is < 16 px;
6. drop near-duplicates: a 256-bit difference hash (17x16 grayscale
   thumbnail) within ``--hash-threshold`` bits of an already kept image
   (images are visited largest first, so the best-resolution variant wins),
   and colour variants: same folder and same name up to colour words
   (``led_rounded_h_grey`` / ``led_rounded_h_orange``) with the hash within
   ``--variant-threshold`` bits;
7. cap each class at ``--max-per-class`` images (round-robin over sub-folders
   so that one huge sub-folder, e.g. the computer icon themes, cannot crowd
   out the others);
8. hold out a fixed test split (``--test-frac`` of each class, at least
   ``--min-test``);
9. write PNGs (256-colour palette when it is lossless or PSNR >= 40 dB,
   RGB otherwise; ``optimize=True``), ``metadata.jsonl``, ``classes.json``,
   ``build_stats.json``, ``DATA_CARD.md`` and ``docs/clipart_overview.png``.

Usage (from the repository root)::

    python scripts/build_clipart_dataset.py

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
import re
import shutil
import subprocess
import sys
import time
import warnings
import zlib
from multiprocessing import Pool

import numpy as np
from PIL import Image, ImageDraw, ImageFont

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SRC = "/usr/share/openclipart/png"
PACKAGE = "openclipart-png"

# ---------------------------------------------------------------------------
# Class definition: first matching path prefix wins.
# ---------------------------------------------------------------------------
CLASS_RULES: list[tuple[str, str]] = [
    ("signs_and_symbols/flags/", "flags"),
    ("recreation/games/", "games"),
    ("animals/", "animals"),
    ("buildings/", "buildings"),
    ("computer/", "computer"),
    ("electronics/", "computer"),  # 43 files: batteries, bulbs, dishes ...
    ("education/", "education"),
    ("science/", "education"),  # 21 files
    ("food/", "food"),
    ("geography/", "geography"),
    ("office/", "office"),
    ("people/", "people"),
    ("plants/", "plants"),
    ("recreation/", "recreation"),
    ("shapes/", "shapes"),
    ("signs_and_symbols/", "signs_and_symbols"),
    ("tools/", "tools"),
    ("transportation/", "transportation"),
    ("unsorted/", "misc"),
    ("containers/", "misc"),  # 16
    ("decorations/", "misc"),  # 26
    ("logos/", "misc"),  # 7
    ("buttons/", "misc"),  # 3
    ("special/", "misc"),  # only special/examples survive the path filter
]

# Generated images, dropped by path.
GENERATED_RULES: list[tuple[str, str]] = [
    (r"^shapes/stars/star_\d+pt\d+step\.png$", "generated_spirograph"),
    (r"^special/gradients/", "generated_pattern"),
    (r"^special/patterns/", "generated_pattern"),
]

# Filter thresholds (see --help for the tunable ones).
MIN_SOURCE_AREA = 48 * 48
MIN_SHORT_SIDE = 16
MAX_ASPECT = 4.0
MIN_STD = 8.0  # grayscale std (0..255) of the trimmed, downscaled image
MAX_DOMINANT = 0.95  # max fraction of pixels in the most common 16^3 colour bin
BG_TOLERANCE = 12  # max |channel - background| still counted as background
TRIM_MARGIN = 0.04  # margin kept around the content box, fraction of long side
PREREDUCE_AREA = 1_000_000  # background detection on a copy box-reduced to ~this area
PALETTE_MIN_PSNR = 40.0

# ---------------------------------------------------------------------------
# Captions
# ---------------------------------------------------------------------------
# openclipart 0.18 file names are "<title>_<author>" cut to 24 characters plus
# an optional "_NN" counter.  AUTHOR_TOKENS lists the name tokens of the
# dc:creator fields of the matching openclipart-svg files (ASCII-folded and
# lower-cased; common words removed).  Only a trailing run of such tokens is
# stripped, and only from its first "strong" (distinctive) token on.
AUTHOR_TOKENS = set(
    """
3lusive aaron abiclipart abo adamkiewicz adams adib adolfo afief aiello aitor aj aki al
alan alberto alcalde alejandro alex alexander alexandro alexandru alfredsson ali allen
amos andrade andrea andreas andrei andremarcel andrew andy angelo ani anita anna
anonmoos anonymous anthony anton arago21 araujo architetto arezki arjen arn arseneau
artis ashton astrid atkeson aubanel aubry augier avila b ba baker balin barg barry
bartel bazelkov bech ben benji bersac bertle bianchini biele birkett blackjack bob
bogdan boitel bojan borja bosdonnat bouder boyer bpowah bradley brady bram bravo
breitler brett breuer brian brice brill brito broberg bruno bryce btunell buck buculei
buksis burger burns c cabrera cagle caiafa caleb camenforte campbell carlos cedric celso
ceratto cezary ch charles chaspo chelly chen cheng chris christian christiansen
christoph christophe chun chung claygirl clec clech clemente clementz cliff cloran
codifiedivining colin colorado com conde conner corey corwin cory cosmin costea coudoin
coutinho cowtan craig craven crosbie cruz czara1 d dagit dan daniel danny darek darkon
darwin dave davek davenport david davide deboer delay denco dennis deragon detzel diaz
dietrich diogo dirk dodt domas doucet drapel dudziak duhan dunhan durex86 dvornik eady
eduardo einar eitel ellis emilio emule enrique epita epting eric erich erik erwan
etienne ezechiele faanes fabien fabio faes fajardo farrel fco fearzip fecteau federico
felipe felipescu felix fernandez ferreiro feth ff77 fidi filip fioravanti fitzsimon
fowler fr francesco francisco franck francois frank frauenfelder frederic fredrik
frolich frouke fudriot fuentes g gabriel gabrielle gaeremyn gagliani galion gates gatto
gbc gejic gelmi geraint gerald gerhards gerhrads ghuul gino giuseppe glenn gluckselig
gmv goerner golan gondouin goneri gonzalez gracia graeber graig graubner greg gron
gronde guido guillaume guillou guimond gustav guziec h hackervalley halumi hann hans
hardi harrington havok hawkes hermann hernandez hevia hicks hilker hinkle hinsley
holmqvist honeychurch horkan huss hussnain iacono ian ianeselli igor illner ingoenius
israel ivancic j jacq jaime jakob jakobs james jamin janet jarno jason jasonsmith jasper
jean jeff jens jensen jesir jesper jmrivera joel joerg joeseph john johnson joiner
jokubauskis jon jonadab jonasstein jonathan jonathon jonvdveen joplin jordan jorgen
jorkon jose joshua josua josue juliane junior jure jurgen justin jza k kachi kacinko
kanitkar kaplinski karam karl karlsson karol katastrofsky kautto kedzierski kempson
kenneth kesigomu kessels kevin kexi khilko kilfiger kilian kim kimbro kimiko klann
klimov kocon kodzoman kolehmainen konsatantin kotliar kozak kratochvala krivosheev
krizanovskij krug ksc kuehne kukkuk kurt kuslits kuswanto lakshman lam laszlo launois
lauris lawtrakul lehnsherr lehtonen leif leigh levis liekens lifson lima linda linden
lodahl loewen loic lorenzo loup loz luca lucas luengo luff luigi luiz lumen lummemaki m
maciel madsen maelstrom magnus maischberger maja malik mamede manolo marc marcelo marcin
mario mariusz mark marko marrone martin mascolo maselli mateya mathias matt matteo
matthew matthieu maurer maurice mauro maza mazdac mccann mccolm mcrae medvedev meijer
merrigan merzok meuser meza michael mielniczuk miguel mike mikhail mimooh mirjam mirko
mitchell mo moises monnier montes moore moser muji murphy namous nassar nathan neary
negrini neil net nicolas nicu niels nikola nilsson nordstrom nowicki nubldoff nurbldoff
oca oleg olivier olivo omar omic orbu org orlando ots owens p80 park pat patricia
patrick paul pcch pedro pekkala pena pesenti peterm petri phentex philipp philippe
phillips philosophil piccinno piotr pixelator pizurica pl poonyth popescu postma purdie
quesnay r ralf raphael rariden rebours reckoning redhand remik renante renardjb richard
rick rikva rincon ringe rintsch risto rivera rob robert roberto rodrigo roldan rolland
rollandin roman romus ron roper rory rosenbauer ross rotkevich rozentals ruairi rueda
russell rutjes ruud ryan s sadleder saint samaniego samir sanchez sanders santiago
schaller scheibengruber scheuer schilde schmidt schroder schubert schwarting scott seban
seitz sek semmens sergio seth shah shandy shawn sherrera shockwavedj sigge silva
silverninja simpson smick snuatautisticidotorg soares spencer spike staudt steele stefan
steffen steltenpool stepan stephan stephen steve steven stewart stroe structorr struve
stuart susan suwalski szczerba t tanguy tapio tatiana teed tejada terry tess teudimundo
theerud theobroma thom thomas thorp timothy tjader tlarson tobias todd toh tom tomaa
tomas tomek tonino torkar torres toullec trent tristan tsoumbris tunnicliffe u uliphant
unsightly utrescu valessio valkhof van vance vargas vasamaa victor vikingdread vincent
virginie vitor vladimir voelger w walden wardrop warren warttig warwick webb welch wes
wheeler whittington wiens wilc wilfried william wislon wixson www xavier xuacu yager yam
yastrov yemu yen ygdrasil yogesh yu yutaka yves yvounet z zazou zedlitz zeko zenith
ziemlinski zigor zlocki
""".split()
)
AUTHOR_TOKENS |= {"ganson", "konstantin", "openclipart"}
# Short author tokens (initials) that are safe to strip.
SHORT_AUTHOR_TOKENS = {"mo", "aj", "md", "ff"}
# Author first names that are also used alone: stripped next to a strong token,
# or alone at the end of a truncated name ("traffic_light_green_dan_").
NAME_AUTHOR_TOKENS = set(
    """
ben pat rob ron rick lam yam dan al ali ani anna bram bruno greg jason john lucas marc
matt mike paul ryan scott tom wes yu chen
""".split()
)
# Author tokens that are also ordinary words: stripped only right of a strong token.
WORD_AUTHOR_TOKENS = set(
    """
van net mark lima cliff park frank gates bob ross ringe com org www fr pl ch u ots
saint buck delay burns luff silva design studio
""".split()
)
# Junk tokens dropped anywhere in a caption.
JUNK_TOKENS = set(
    """
gnome mime fs stock kde gtk bb sm aiga png svg clipart openclipart v0 v1 v2 v3 ooo 1m
""".split()
)
TOKEN_MAP = {"bw": "black and white", "bwh": "black and white"}
CARD_SUITS = {"c": "clubs", "d": "diamonds", "h": "hearts", "s": "spades"}
CARD_RANKS = {"a": "ace", "j": "jack", "q": "queen", "k": "king"}


def _tokens(stem: str) -> list[str]:
    stem = stem.lower()
    stem = re.sub(r"([a-z])(\d)", r"\1 \2", stem)  # arrow06 -> arrow 06
    return [t for t in re.split(r"[^a-z0-9]+", stem) if t]


def _is_number_like(tok: str) -> bool:
    return bool(re.fullmatch(r"\d+[a-z]?|v\d+|\d+x\d+(x\d+)?", tok))


def make_caption(rel: str) -> str:
    """Caption from the file name (``rel`` is the path inside the package)."""
    parts = rel.split("/")
    stem = parts[-1][:-4]
    # Playing cards: <style>_<suit>_<rank>.png
    m = re.fullmatch(r"(bordered|ornamental|simple|white)_([cdhs])_(\d+|[ajqk])", stem)
    if "/cards/" in rel and m:
        style, suit, rank = m.groups()
        rank = CARD_RANKS.get(rank, rank)
        return f"{rank} of {CARD_SUITS[suit]} playing card, {style} style"
    m = re.fullmatch(r"(bordered|ornamental|simple|white)_jk_([br])", stem)
    if "/cards/" in rel and m:
        colour = {"b": "black", "r": "red"}[m.group(2)]
        return f"{colour} joker playing card, {m.group(1)} style"

    # Drop the "_01" / "_01r" counters and, after a cut name, "_r"-style variant letters.
    stem = re.sub(r"[-_.]v\d+(\.\d+)*", "", stem)  # version tags: steak-v0.1
    core, variant = stem, False
    while True:
        m = re.search(r"_(\d+[a-z]?|[a-z])$", core)
        if not m or not (m.group(1)[0].isdigit() or len(core[: m.start()].rstrip("_")) >= 20):
            break
        variant = variant or not m.group(1)[0].isdigit()
        core = core[: m.start()]
    # 24 characters, or a trailing "_" (a cut space), or "_r"-style variant letter
    truncated = len(core) >= 24 or core.endswith("_") or variant
    toks = _tokens(core)
    while toks and _is_number_like(toks[-1]):
        toks.pop()
    # Trailing run of author-like tokens.
    authorish_vocab = AUTHOR_TOKENS | SHORT_AUTHOR_TOKENS | NAME_AUTHOR_TOKENS | WORD_AUTHOR_TOKENS

    def partial(t: str) -> bool:  # a name cut by the 24-character limit
        return any(x.startswith(t) for x in authorish_vocab if len(x) > len(t))

    run_start = len(toks)
    for i in range(len(toks) - 1, 0, -1):  # never consume the first token
        t = toks[i]
        if t in authorish_vocab or (i == len(toks) - 1 and truncated and partial(t)):
            run_start = i
        else:
            break

    def strong(t: str) -> bool:
        if t in SHORT_AUTHOR_TOKENS:
            return True
        if t in NAME_AUTHOR_TOKENS or t in WORD_AUTHOR_TOKENS:
            return False
        return len(t) >= 4 or (t in AUTHOR_TOKENS and len(t) >= 3)

    run = range(run_start, len(toks))
    first_strong = next((i for i in run if strong(toks[i])), None)
    cut = None
    if first_strong is not None:
        cut = first_strong
        # extend left over first names and initials ("dan gerhards", "a j ashton")
        while cut - 1 >= 1 and (toks[cut - 1] in NAME_AUTHOR_TOKENS or re.fullmatch("[a-z]", toks[cut - 1])):
            cut -= 1
        if cut == 1 and toks[0] in authorish_vocab:
            cut = 0  # the whole name is an author name
    elif truncated and run_start < len(toks) and any(toks[i] in NAME_AUTHOR_TOKENS for i in run):
        if all(toks[i] in NAME_AUTHOR_TOKENS or len(toks[i]) <= 2 for i in run):
            cut = run_start
    if len(toks) == 1 and toks[0] in AUTHOR_TOKENS and len(toks[0]) >= 4:
        cut = 0  # e.g. "mimooh_01.png"
    if cut is not None:
        toks = toks[:cut]  # may leave nothing: folder-name fallback below
    elif truncated and len(toks) > 1 and len(toks[-1]) <= 2:
        toks = toks[:-1]  # truncated one/two-letter fragment of an author name
    out = []
    for t in toks:
        if t in JUNK_TOKENS:
            continue
        t = TOKEN_MAP.get(t, t)
        if out and out[-1] == t:
            continue
        out.append(t)
    if not out:  # nothing left: fall back to the folder name
        folder = parts[-2] if len(parts) > 1 else "clipart"
        out = [folder.replace("_", " ").replace("-", " ")]
    return " ".join(out)


# ---------------------------------------------------------------------------
# Image processing (runs in worker processes)
# ---------------------------------------------------------------------------
def _dhash_bits(gray: Image.Image, n: int = 16) -> np.ndarray:
    t = np.asarray(gray.resize((n + 1, n), Image.LANCZOS), dtype=np.int16)
    return (t[:, 1:] > t[:, :-1]).ravel()


def process_image(job: tuple[str, str, int, bool]) -> dict:
    """Decode, composite on white, trim, downscale and measure one image."""
    path, _rel, area_budget, trim = job
    warnings.simplefilter("ignore")
    Image.MAX_IMAGE_PIXELS = None  # a few sources are ~600 Mpx (e.g. 20990 x 29700)
    full = Image.open(path).convert("RGBA")
    src_w, src_h = full.size
    # Background detection works on a copy reduced to <= ~1 Mpx.
    scale = 1
    work = full
    if src_w * src_h > PREREDUCE_AREA:
        scale = math.ceil(math.sqrt(src_w * src_h / PREREDUCE_AREA))
        work = full.reduce(scale)  # premultiplied box filter
    bg = Image.new("RGBA", work.size, (255, 255, 255, 255))
    bg.alpha_composite(work)
    a = np.asarray(bg.convert("RGB"), dtype=np.int16)
    del bg, work
    h, w = a.shape[:2]
    corners = np.stack([a[0, 0], a[0, -1], a[-1, 0], a[-1, -1]])
    bgc = np.median(corners, axis=0)
    content = np.abs(a - bgc).max(axis=-1) > BG_TOLERANCE
    del a
    out: dict = {"src_size": (src_w, src_h)}
    if not content.any():
        out["reason"] = "blank"
        return out
    rows = np.flatnonzero(content.any(axis=1))
    cols = np.flatnonzero(content.any(axis=0))
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    out["content_fraction"] = (x1 - x0) * (y1 - y0) / float(w * h)
    if trim:
        m = max(1, round(TRIM_MARGIN * max(x1 - x0, y1 - y0)))
        x0, y0, x1, y1 = max(0, x0 - m), max(0, y0 - m), min(w, x1 + m), min(h, y1 + m)
    else:
        x0, y0, x1, y1 = 0, 0, w, h
    box = (x0 * scale, y0 * scale, min(src_w, x1 * scale), min(src_h, y1 * scale))
    region = full.crop(box) if box != (0, 0, src_w, src_h) else full
    del full
    sw, sh = region.size
    f = min(1.0, math.sqrt(area_budget / float(sw * sh)))  # never upscale
    nw, nh = max(1, int(sw * f)), max(1, int(sh * f))
    while nw * nh > area_budget:  # guard against rounding over the budget
        if nw >= nh:
            nw -= 1
        else:
            nh -= 1
    out["crop_box"], out["size"] = list(box), (nw, nh)
    if max(nw, nh) / min(nw, nh) > MAX_ASPECT:
        out["reason"] = "extreme_aspect"
        return out
    if min(nw, nh) < MIN_SHORT_SIDE:
        out["reason"] = "too_thin"
        return out
    if (nw, nh) != (sw, sh):
        region = region.resize((nw, nh), Image.LANCZOS, reducing_gap=3.0)  # premultiplied alpha
    bg = Image.new("RGBA", region.size, (255, 255, 255, 255))
    bg.alpha_composite(region)
    rgb = bg.convert("RGB")
    arr = np.asarray(rgb)
    gray = rgb.convert("L")
    std = float(np.asarray(gray, dtype=np.float32).std())
    q = (arr // 16).astype(np.int32)
    key = (q[..., 0] << 8) | (q[..., 1] << 4) | q[..., 2]
    dominant = float(np.bincount(key.ravel()).max()) / key.size
    out["std"], out["dominant"] = std, dominant
    if std < MIN_STD:
        out["reason"] = "near_uniform"
        return out
    if dominant > MAX_DOMINANT:
        out["reason"] = "single_colour"
        return out
    out["dhash"] = np.packbits(_dhash_bits(gray)).tobytes()
    out["png"], out["png_mode"] = encode_png(rgb)
    out["reason"] = None
    return out


def encode_png(rgb: Image.Image) -> tuple[bytes, str]:
    """Optimized PNG; 256-colour palette if lossless or PSNR >= 40 dB."""
    buf = io.BytesIO()
    pal = rgb.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    err = np.asarray(pal.convert("RGB"), dtype=np.float32) - np.asarray(rgb, dtype=np.float32)
    mse = float((err**2).mean())
    psnr = float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)
    if psnr >= PALETTE_MIN_PSNR:
        pal.save(buf, "PNG", optimize=True)
        return buf.getvalue(), "P"
    rgb.save(buf, "PNG", optimize=True)
    return buf.getvalue(), "RGB"


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
def class_of(rel: str) -> str | None:
    for prefix, name in CLASS_RULES:
        if rel.startswith(prefix):
            return name
    return None


def subgroup_of(rel: str) -> str:
    """Sub-folder used for round-robin capping (first two path levels)."""
    parts = rel.split("/")[:-1]
    return "/".join(parts[:2]) if parts else ""


def class_rng(seed: int, name: str, salt: str) -> random.Random:
    return random.Random(seed * 1_000_003 + zlib.crc32(f"{salt}:{name}".encode()))


def safe_stem(rel: str) -> str:
    stem = os.path.basename(rel)[:-4].lower()
    stem = re.sub(r"[^a-z0-9_-]+", "_", stem).strip("_-")
    return stem or "image"


COLOUR_WORDS = set(
    """
red green blue yellow orange purple violet pink grey gray black white brown cyan magenta
seagreen gold golden silver bw bwh colour color coloured colored
""".split()
)


def variant_key(rel: str) -> str:
    """Folder + caption without colour words: "led_rounded_h_grey.png" -> "led rounded h"."""
    toks = [t for t in re.split(r"[^a-z0-9]+", make_caption(rel)) if t and t not in COLOUR_WORDS | {"and"}]
    # keep a number glued to the name ("smiley002", "arrow04_1"), which the caption drops,
    # but not a separate "_01" counter (colour variants are often "_01", "_02")
    core = re.sub(r"(_\d+[a-z]?)+$", "", os.path.basename(rel)[:-4].lower())
    m = re.search(r"[a-z](\d+)$", core)
    if m:
        toks.append(m.group(1))
    return os.path.dirname(rel) + "/" + " ".join(toks)


def package_version() -> str:
    try:
        return subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", PACKAGE], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def dir_size(path: str) -> tuple[int, int]:
    """(apparent bytes, allocated bytes) of all files below path."""
    apparent = allocated = 0
    for root, _, files in os.walk(path):
        for f in files:
            st = os.stat(os.path.join(root, f))
            apparent += st.st_size
            allocated += getattr(st, "st_blocks", math.ceil(st.st_size / 512)) * 512
    return apparent, allocated


def histogram(values, edges, fmt="{:g}") -> list[tuple[str, int]]:
    values = np.asarray(values, dtype=np.float64)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        n = int(((values >= lo) & (values < hi)).sum())
        label = f"[{fmt.format(lo)}, {fmt.format(hi)})" if math.isfinite(hi) else f">= {fmt.format(lo)}"
        rows.append((label, n))
    return rows


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------
def build(args: argparse.Namespace) -> None:
    t_start = time.time()
    Image.MAX_IMAGE_PIXELS = None  # trusted input; a few sources are ~600 Mpx
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    src = os.path.abspath(args.src)
    out_dir = os.path.abspath(args.out)
    if not os.path.isdir(src):
        sys.exit(f"{src} not found: install it with `apt-get install -y {PACKAGE}`")

    rels = sorted(
        os.path.relpath(os.path.join(root, f), src).replace(os.sep, "/")
        for root, _, files in os.walk(src)
        for f in files
        if f.lower().endswith(".png")
    )
    print(f"found {len(rels)} PNG files under {src}")
    dropped: collections.Counter = collections.Counter()
    drop_examples: dict[str, list[str]] = collections.defaultdict(list)

    drop_log: list[dict] = []

    def drop(rel: str, reason: str, of: str | None = None) -> None:
        drop_log.append({"source": rel, "reason": reason, **({"duplicate_of": of} if of else {})})
        dropped[reason] += 1
        if len(drop_examples[reason]) < 5:
            drop_examples[reason].append(rel)

    # 1-2. class mapping and path-based filters
    cands = []
    for rel in rels:
        reason = next((r for pat, r in GENERATED_RULES if re.search(pat, rel)), None)
        if reason:
            drop(rel, reason)
            continue
        cls = class_of(rel)
        if cls is None:
            drop(rel, "no_class")
            continue
        cands.append((rel, cls))

    # 3. exact duplicates (same bytes); prefer a non-misc copy, then path order
    by_md5: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    for rel, cls in cands:
        with open(os.path.join(src, rel), "rb") as fh:
            by_md5[hashlib.md5(fh.read()).hexdigest()].append((rel, cls))
    cands = []
    for group in by_md5.values():
        group.sort(key=lambda rc: (rc[1] == "misc", rc[0]))
        cands.append(group[0])
        for rel, _ in group[1:]:
            drop(rel, "exact_duplicate", group[0][0])
    cands.sort()

    # 4. tiny sources
    kept = []
    for rel, cls in cands:
        with Image.open(os.path.join(src, rel)) as im:
            w, h = im.size
        if w * h < MIN_SOURCE_AREA:
            drop(rel, "tiny_source")
        else:
            kept.append((rel, cls))
    cands = kept

    # 5. decode + per-image filters (parallel, ordered results)
    jobs = [(os.path.join(src, rel), rel, args.area_budget, not args.no_trim) for rel, _ in cands]
    t0 = time.time()
    if args.workers > 1:
        with Pool(args.workers) as pool:
            results = list(pool.imap(process_image, jobs, chunksize=4))
    else:
        results = [process_image(j) for j in jobs]
    print(f"decoded {len(jobs)} images in {time.time() - t0:.0f}s")
    items = []
    for (rel, cls), res in zip(cands, results):
        if res["reason"]:
            drop(rel, res["reason"])
        else:
            res.update(rel=rel, cls=cls)
            items.append(res)

    # 6. near-duplicates, largest output first (then largest source, then path)
    items.sort(key=lambda r: (-r["size"][0] * r["size"][1], -r["src_size"][0] * r["src_size"][1], r["rel"]))
    bits = np.stack([np.unpackbits(np.frombuffer(r["dhash"], dtype=np.uint8)) for r in items]).astype(np.float32)
    kept_idx: list[int] = []
    kept_bits = np.zeros((0, bits.shape[1]), dtype=np.float32)
    kept_by_key: dict[str, list[int]] = collections.defaultdict(list)  # name key -> rows of kept_bits
    for i in range(len(items)):
        b = bits[i]
        key = variant_key(items[i]["rel"])
        if len(kept_idx):
            ham = kept_bits @ (1 - b) + (1 - kept_bits) @ b
            j = int(np.argmin(ham))
            if ham[j] <= args.hash_threshold:
                drop(items[i]["rel"], "near_duplicate", items[kept_idx[j]]["rel"])
                continue
            same = [k for k in kept_by_key.get(key, []) if ham[k] <= args.variant_threshold]
            if same:
                drop(items[i]["rel"], "colour_variant", items[kept_idx[same[0]]]["rel"])
                continue
        kept_by_key[key].append(len(kept_idx))
        kept_idx.append(i)
        kept_bits = np.vstack([kept_bits, bits[i : i + 1]])
    items = sorted((items[i] for i in kept_idx), key=lambda r: r["rel"])

    # 7. per-class cap, round-robin over sub-folders
    by_class: dict[str, list[dict]] = collections.defaultdict(list)
    for r in items:
        by_class[r["cls"]].append(r)
    classes = sorted(by_class)
    small = [c for c in classes if len(by_class[c]) < args.min_per_class]
    for c in small:
        for r in by_class.pop(c):
            drop(r["rel"], "class_too_small")
    classes = sorted(by_class)
    available = {c: len(by_class[c]) for c in classes}
    for c in classes:
        lst = by_class[c]
        if len(lst) <= args.max_per_class:
            continue
        rng = class_rng(args.seed, c, "cap")
        groups: dict[str, list[dict]] = collections.defaultdict(list)
        for r in lst:
            groups[subgroup_of(r["rel"])].append(r)
        queues = []
        for g in sorted(groups):
            q = list(groups[g])
            rng.shuffle(q)
            queues.append(q)
        chosen: list[dict] = []
        while len(chosen) < args.max_per_class:
            for q in queues:
                if q and len(chosen) < args.max_per_class:
                    chosen.append(q.pop())
        chosen_ids = {id(r) for r in chosen}
        for r in lst:
            if id(r) not in chosen_ids:
                drop(r["rel"], "class_cap")
        by_class[c] = sorted(chosen, key=lambda r: r["rel"])

    # 8. test split
    for c in classes:
        lst = by_class[c]
        n_test = max(args.min_test, round(args.test_frac * len(lst)))
        order = list(range(len(lst)))
        class_rng(args.seed, c, "split").shuffle(order)
        test = set(order[:n_test])
        for k, r in enumerate(lst):
            r["split"] = "test" if k in test else "train"

    # 9. write everything
    img_root = os.path.join(out_dir, "images")
    if os.path.isdir(img_root):
        shutil.rmtree(img_root)
    os.makedirs(img_root)
    records = []
    modes = collections.Counter()
    for label, c in enumerate(classes):
        os.makedirs(os.path.join(img_root, c))
        used: set[str] = set()
        for r in by_class[c]:
            stem = safe_stem(r["rel"])
            name, k = stem, 2
            while name in used:
                name, k = f"{stem}_{k}", k + 1
            used.add(name)
            rel_out = f"images/{c}/{name}.png"
            with open(os.path.join(out_dir, rel_out), "wb") as fh:
                fh.write(r["png"])
            modes[r["png_mode"]] += 1
            w, h = r["size"]
            records.append(
                {
                    "path": rel_out,
                    "label": label,
                    "class_name": c,
                    "caption": make_caption(r["rel"]),
                    "split": r["split"],
                    "width": w,
                    "height": h,
                    "source": f"{src}/{r['rel']}",
                }
            )
    records.sort(key=lambda r: r["path"])
    with open(os.path.join(out_dir, "metadata.jsonl"), "w") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    with open(os.path.join(out_dir, "classes.json"), "w") as fh:
        json.dump(classes, fh, indent=1)
        fh.write("\n")

    if args.dropped_log:
        with open(args.dropped_log, "w") as fh:
            for d in sorted(drop_log, key=lambda d: d["source"]):
                fh.write(json.dumps(d) + "\n")

    # Statistics
    per_class = {
        c: {
            "label": i,
            "available_after_filters": available[c],
            "train": sum(1 for r in by_class[c] if r["split"] == "train"),
            "test": sum(1 for r in by_class[c] if r["split"] == "test"),
        }
        for i, c in enumerate(classes)
    }
    widths = [r["width"] for r in records]
    heights = [r["height"] for r in records]
    areas = [w * h for w, h in zip(widths, heights)]
    aspects = [w / h for w, h in zip(widths, heights)]
    drop_order = [
        "generated_spirograph",
        "generated_pattern",
        "no_class",
        "exact_duplicate",
        "tiny_source",
        "blank",
        "extreme_aspect",
        "too_thin",
        "near_uniform",
        "single_colour",
        "near_duplicate",
        "colour_variant",
        "class_too_small",
        "class_cap",
    ]
    stats = {
        "package": PACKAGE,
        "package_version": package_version(),
        "source_dir": src,
        "n_source_files": len(rels),
        "n_images": len(records),
        "n_classes": len(classes),
        "n_train": sum(r["split"] == "train" for r in records),
        "n_test": sum(r["split"] == "test" for r in records),
        "params": {
            "area_budget": args.area_budget,
            "max_per_class": args.max_per_class,
            "min_per_class": args.min_per_class,
            "test_frac": args.test_frac,
            "min_test": args.min_test,
            "seed": args.seed,
            "hash_threshold_bits_of_256": args.hash_threshold,
            "variant_threshold_bits_of_256": args.variant_threshold,
            "trim": not args.no_trim,
            "min_source_area": MIN_SOURCE_AREA,
            "min_short_side": MIN_SHORT_SIDE,
            "max_aspect": MAX_ASPECT,
            "min_gray_std": MIN_STD,
            "max_dominant_colour_fraction": MAX_DOMINANT,
            "palette_min_psnr_db": PALETTE_MIN_PSNR,
        },
        "dropped": {k: dropped.get(k, 0) for k in drop_order if dropped.get(k, 0)},
        "drop_examples": {k: drop_examples[k] for k in drop_order if k in drop_examples},
        "per_class": per_class,
        "png_modes": dict(modes),
        "width_hist": histogram(widths, [0, 32, 48, 64, 80, 96, 112, 128, 160, 192, 256, math.inf]),
        "height_hist": histogram(heights, [0, 32, 48, 64, 80, 96, 112, 128, 160, 192, 256, math.inf]),
        "area_hist": histogram(areas, [0, 1024, 2048, 3072, 4096, 6144, 8192, 10240, 12288, 14336, math.inf]),
        "aspect_hist": histogram(aspects, [0, 1 / 3, 1 / 2, 2 / 3, 0.9, 1 / 0.9, 1.5, 2, 3, math.inf], fmt="{:.2f}"),
        "area_quantiles": {str(q): float(np.percentile(areas, q)) for q in (0, 10, 50, 90, 100)},
        "mean_bytes_per_image": float(np.mean([len(r["png"]) for c in classes for r in by_class[c]])),
    }
    overview = os.path.join(REPO_ROOT, "docs", "clipart_overview.png") if args.overview else None
    if overview:
        make_overview(out_dir, records, classes, overview, args.seed)
        print(f"wrote {overview}")
    caps = [r["caption"] for r in records]
    stats["captions"] = {
        "distinct": len(set(caps)),
        "mean_words": float(np.mean([len(c.split()) for c in caps])),
        "examples": [(r["path"], r["caption"]) for r in records[:: max(1, len(records) // 12)]][:12],
    }
    # Write card + stats, measure the folder, write them again with the size
    # (the second pass changes the size by a few bytes at most).
    stats["size_bytes_apparent"] = stats["size_bytes_allocated"] = 0
    for _ in range(2):
        write_data_card(out_dir, stats, args)
        with open(os.path.join(out_dir, "build_stats.json"), "w") as fh:
            json.dump(stats, fh, indent=1)
            fh.write("\n")
        stats["size_bytes_apparent"], stats["size_bytes_allocated"] = dir_size(out_dir)
    apparent, allocated = stats["size_bytes_apparent"], stats["size_bytes_allocated"]

    # Summary
    print(
        f"\n{len(records)} images, {len(classes)} classes "
        f"({stats['n_train']} train / {stats['n_test']} test), PNG modes {dict(modes)}"
    )
    print(f"{'class':20s} {'label':>5s} {'avail':>6s} {'train':>6s} {'test':>5s}")
    for c in classes:
        p = per_class[c]
        print(f"{c:20s} {p['label']:5d} {p['available_after_filters']:6d} {p['train']:6d} {p['test']:5d}")
    print("\ndropped:")
    for k, v in stats["dropped"].items():
        print(f"  {k:22s} {v:5d}")
    print(f"  {'total':22s} {sum(stats['dropped'].values()):5d}")
    print(f"\n{out_dir}: {apparent / 2**20:.1f} MiB apparent, {allocated / 2**20:.1f} MiB on disk")
    print(f"done in {time.time() - t_start:.0f}s")


# ---------------------------------------------------------------------------
# Contact sheet
# ---------------------------------------------------------------------------
def _font(size: int):
    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            pass
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def make_overview(out_dir, records, classes, path, seed, per_class=10, cell=100, label_w=190):
    pad = 6
    by_class = collections.defaultdict(list)
    for r in records:
        if r["split"] == "train":
            by_class[r["class_name"]].append(r)
    W = label_w + per_class * (cell + pad) + pad
    H = pad + len(classes) * (cell + pad) + 30
    sheet = Image.new("RGB", (W, H), (236, 236, 236))
    d = ImageDraw.Draw(sheet)
    big, small = _font(16), _font(12)
    d.text(
        (pad, H - 24),
        f"openclipart-png clipart dataset: {len(records)} images, {len(classes)} classes "
        f"(random train examples, shown at native size, downscaled only to fit {cell}x{cell})",
        fill=(60, 60, 60),
        font=small,
    )
    for row, c in enumerate(classes):
        y = pad + row * (cell + pad)
        n = sum(1 for r in records if r["class_name"] == c)
        d.text((pad, y + cell // 2 - 18), f"{row}: {c}", fill=(0, 0, 0), font=big)
        d.text((pad, y + cell // 2 + 4), f"{n} images", fill=(90, 90, 90), font=small)
        ex = list(by_class[c])
        class_rng(seed, c, "overview").shuffle(ex)
        for k, r in enumerate(ex[:per_class]):
            x = label_w + k * (cell + pad)
            d.rectangle([x, y, x + cell - 1, y + cell - 1], fill=(255, 255, 255))
            im = Image.open(os.path.join(out_dir, r["path"])).convert("RGB")
            im.thumbnail((cell, cell), Image.LANCZOS)
            sheet.paste(im, (x + (cell - im.width) // 2, y + (cell - im.height) // 2))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sheet.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


# ---------------------------------------------------------------------------
# Data card
# ---------------------------------------------------------------------------
COPYRIGHT_QUOTE = """\
> It was downloaded from http://www.openclipart.org
>
> Upstream Authors: Each image has an associated .txt file giving information
> about the image, including the author.
>
> Copyright:
>
> creative commons Public Domain Dedication
>
> Copyright-Only Dedication (based on United States law) or Public Domain
> Certification
>
> [...] Dedicator recognizes that, once placed in the public domain, the Work
> may be freely reproduced, distributed, transmitted, used, modified, built
> upon, or otherwise exploited by anyone for any purpose, commercial or
> non-commercial, and in any way, including by methods that have not yet been
> invented or conceived."""

DROP_DESCRIPTIONS = {
    "generated_spirograph": "`shapes/stars/star_NNptMMstep.png`: generated spirograph line patterns",
    "generated_pattern": (
        "`special/gradients/*` (fully transparent in this PNG rendering) and `special/patterns/*` (tiling textures)"
    ),
    "no_class": "folder not mapped to a class",
    "exact_duplicate": "byte-identical copy of another file (the package ships many files in 2+ folders)",
    "tiny_source": f"source image area < {MIN_SOURCE_AREA} px (48x48), e.g. small computer icons",
    "blank": "nothing but background after compositing on white",
    "extreme_aspect": f"aspect ratio > {MAX_ASPECT:g}:1 (after trimming)",
    "too_thin": f"short side < {MIN_SHORT_SIDE} px after downscaling",
    "near_uniform": f"grayscale pixel std < {MIN_STD:g} (after trimming/downscaling)",
    "single_colour": f"> {MAX_DOMINANT:.0%} of pixels in one 16x16x16 colour bin",
    "near_duplicate": "256-bit difference hash within the threshold of a kept image (size/colour variants)",
    "colour_variant": (
        "same folder and name up to colour words (`led_rounded_h_grey`/`_orange`), hash within the variant threshold"
    ),
    "class_too_small": "class with fewer images than --min-per-class",
    "class_cap": "class above --max-per-class (round-robin over sub-folders, seeded)",
}


def _table(header, rows) -> str:
    numeric = [all(isinstance(r[i], (int, float)) or r[i] == "" for r in rows) for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def write_data_card(out_dir, stats, args) -> None:
    p = stats["params"]
    size = (
        f"{stats['size_bytes_apparent'] / 2**20:.1f} MiB of file data in `data/clipart/` "
        f"({stats['size_bytes_allocated'] / 2**20:.1f} MiB allocated on a 4 KiB-block file system, "
        f"which is what `du -sh data/clipart` reports); "
        f"mean {stats['mean_bytes_per_image'] / 1024:.1f} KiB per image"
    )
    cls_rows = [
        (v["label"], f"`{c}`", v["available_after_filters"], v["train"], v["test"], v["train"] + v["test"])
        for c, v in stats["per_class"].items()
    ]
    cls_rows.append(
        (
            "",
            "**total**",
            sum(v["available_after_filters"] for v in stats["per_class"].values()),
            stats["n_train"],
            stats["n_test"],
            stats["n_images"],
        )
    )
    drop_rows = [(f"`{k}`", v, DROP_DESCRIPTIONS.get(k, "")) for k, v in stats["dropped"].items()]
    drop_rows.append(("**total dropped**", sum(stats["dropped"].values()), ""))
    mapping = collections.defaultdict(list)
    for prefix, name in CLASS_RULES:
        mapping[name].append(f"`{prefix}`")
    map_rows = [(f"`{c}`", ", ".join(mapping[c])) for c in stats["per_class"]]
    side = int(math.sqrt(p["area_budget"]))
    sizes = [v["train"] + v["test"] for v in stats["per_class"].values()]
    cmd = "python scripts/build_clipart_dataset.py"
    defaults = {"area_budget": 112 * 112, "max_per_class": 300}
    extra = [f"--{k.replace('_', '-')} {p[k]}" for k in defaults if p[k] != defaults[k]]
    if not p["trim"]:
        extra.append("--no-trim")
    if extra:
        cmd += " " + " ".join(extra)
    text = f"""# Data card: openclipart-png clipart dataset (`data/clipart/`)

A small, class-labelled and captioned clipart image dataset with **native aspect
ratios**, embedded in the repository for tests, examples and tiny training
runs of the FiTv2 flexible-resolution diffusion transformer.

* **{stats["n_images"]} images, {stats["n_classes"]} classes, {stats["n_train"]} train / {stats["n_test"]} test**
* every image is RGB on a white background (stored as PNG, palette mode `P` or `RGB`:
  load with `Image.open(path).convert("RGB")`), at most {p["area_budget"]} pixels of
  area ({side}x{side} equivalent), aspect ratio between 1:{p["max_aspect"]:g} and {p["max_aspect"]:g}:1
* size: {size}

## Source and licence

* Debian package **`{stats["package"]}`**, version **`{stats["package_version"]}`**
  (source package `openclipart`, "clip art in PNG format"), installed with
  `apt-get install -y openclipart-png`; files read from `{stats["source_dir"]}`
  ({stats["n_source_files"]} PNG files).
* Upstream: the Open Clip Art Library, release 0.18, <http://www.openclipart.org>.
* Licence: **public domain**.  `/usr/share/doc/openclipart-png/copyright` says:

{COPYRIGHT_QUOTE}

  The package description adds: "The Open Clip Art Library is a collection of
  100% license-free, royalty-free, and restriction-free art that you can use for
  any purpose."  (openclipart.org later labelled the same dedication CC0 1.0 /
  public domain.)  The processed images here are released under the same terms;
  the `source` field of every record names the original file.

## Files

* `images/<class_name>/<name>.png`: the images (`<name>` is the original file name).
* `metadata.jsonl`: one JSON object per image, sorted by path:
  `{{"path": "images/<class>/<name>.png", "label": int, "class_name": str, "caption": str,
  "split": "train"|"test", "width": W, "height": H, "source": "<original path in the package>"}}`;
  paths are relative to `data/clipart/`.
* `classes.json`: list of class names, index = `label`.
* `build_stats.json`: parameters, drop counts (with examples), per-class counts, histograms.
* Overview contact sheet: `docs/clipart_overview.png`.

## Loading

```python
import json
from PIL import Image

root = "data/clipart"
classes = json.load(open(f"{{root}}/classes.json"))
records = [json.loads(line) for line in open(f"{{root}}/metadata.jsonl")]
train = [r for r in records if r["split"] == "train"]
image = Image.open(f"{{root}}/{{train[0]['path']}}").convert("RGB")  # some files are palette PNGs
label, caption = train[0]["label"], train[0]["caption"]
```

## How it was built

```
apt-get install -y openclipart-png
{cmd}
```

(`--workers 2` by default: about 3 minutes on 2 idle CPU cores, ~5.5 CPU-minutes,
longer on a busy machine; `--dropped-log PATH` writes every dropped file with its
reason and, for duplicates, the kept file.)  The script is
deterministic (sorted file lists, seed {p["seed"]}, results in input order).
Steps, in order:

1. **Classes** from the package's category folders: the top-level categories,
   with tiny ones merged (`electronics` into `computer`, `science` into
   `education`; `containers`, `decorations`, `logos`, `buttons`,
   `special/examples` into `misc` together with `unsorted`), and two large,
   visually distinct sub-folders promoted to their own classes
   (`signs_and_symbols/flags` -> `flags`, `recreation/games` -> `games`,
   mostly playing cards and chess pieces).
2. **Compositing**: converted to RGBA and composited onto white, then RGB.
3. **Background trim**: {"on" if p["trim"] else "off"}.  Many sources are A4-sized SVG
   exports with a small drawing in the middle; the uniform border (the colour of
   the four corners, tolerance {BG_TOLERANCE}/255) is cut away, keeping a margin of
   {TRIM_MARGIN:.0%} of the long side.  This is not a square crop: the image keeps the
   aspect ratio of the drawing itself.
4. **Downscaling**: Lanczos, so that width x height <= {p["area_budget"]} with the
   aspect ratio kept; never upscaled (small sources stay small).
5. **Filters and de-duplication**: see the table below.  Near-duplicates are found
   with a 256-bit difference hash (grayscale 17x16 thumbnail, horizontal
   gradients); an image is dropped when its hash is within {p["hash_threshold_bits_of_256"]} bits
   of an already kept image, visiting the largest images first.  The hash is
   grayscale, so recoloured copies of one drawing usually count as duplicates.
   In addition, an image is a **colour variant** when a kept image in the same
   folder has the same name up to colour words (`red`, `grey`, `bw`, ...; e.g.
   `led_rounded_h_grey` / `led_rounded_h_orange`, `corn_cob` / `corn_cob_bw`)
   and its hash is within {p["variant_threshold_bits_of_256"]} bits.
6. **Class cap**: at most {p["max_per_class"]} images per class, taken round-robin
   over the sub-folders (seeded shuffle within each) so that, e.g., the
   computer icon themes do not crowd out hardware and buttons.
7. **Test split**: {p["test_frac"]:.0%} of each class (at least {p["min_test"]}), chosen by a
   seeded shuffle.
8. **Encoding**: optimized PNG; stored as a 256-colour palette image when that is
   lossless or has PSNR >= {p["palette_min_psnr_db"]:g} dB against the RGB image
   ({stats["png_modes"].get("P", 0)} images), otherwise RGB ({stats["png_modes"].get("RGB", 0)} images).
9. **Captions** from the file name: `_`/`-` split into words, trailing counters
   (`_01`, `_02r`) and trailing author names (the package names files
   `<title>_<author>`, cut to 24 characters) removed, `bw` -> "black and white";
   playing cards get "queen of hearts playing card, ornamental style".

Captions: {stats["captions"]["distinct"]} distinct strings for {stats["n_images"]} images,
{stats["captions"]["mean_words"]:.1f} words on average.  Examples:

{_table(["file", "caption"], [(f"`{p_}`", c_) for p_, c_ in stats["captions"]["examples"]])}

### Drop counts (each image is counted under the first reason that applies)

{_table(["reason", "dropped", "what"], drop_rows)}

### Class mapping

{_table(["class", "package folders"], map_rows)}

## Counts per class and split

`available` = images left after all filters, before the class cap.

{_table(["label", "class", "available", "train", "test", "total"], cls_rows)}

## Image sizes

Area quantiles (pixels): {", ".join(f"p{k}={v:.0f}" for k, v in stats["area_quantiles"].items())}.

{_table(["area (px)", "images"], stats["area_hist"])}

{_table(["width (px)", "images"], stats["width_hist"])}

{_table(["height (px)", "images"], stats["height_hist"])}

### Aspect ratio (width / height)

{_table(["width / height", "images"], stats["aspect_hist"])}

## Known limitations

* **Small and low-resolution.**  Images are at most {p["area_budget"]} px in area and
  some sources are small (60x60 computer icons are kept at 60x60), so this is a
  dataset for tests, demos and small experiments, not for image quality claims.
* **Clipart style, white background.**  Flat vector-style drawings, many
  outlines and icons; transparency was flattened onto white.
* **Labels are folder names.**  Some classes are broad or mixed (`misc` is the
  package's `unsorted` folder plus small folders; `signs_and_symbols` mixes
  pictograms, hazard signs and symbols; `computer` mixes hardware drawings,
  buttons and desktop icons), and some files are in a folder that fits poorly.
* **Captions are noisy.**  They come only from file names: some are truncated by
  the package's 24-character limit, some are in Italian, French, Spanish or
  Polish, some still contain author fragments, some are generic (folder name
  used when nothing else was left).
* **De-duplication is approximate.**  The grayscale hash also merges
  structurally identical but different images (e.g. some tricolour flags, cards of
  the same suit layout), and variants with small edits may survive.
* **Classes are not perfectly balanced**: the smallest class has
  {min(sizes)} images, the largest {max(sizes)}.
* **Palette quantization** (PSNR >= {p["palette_min_psnr_db"]:g} dB) can add slight banding to
  smooth gradients.
* Exact reproduction needs the same package version and the same Pillow/zlib
  versions (PNG encoding and Lanczos resampling).
"""
    with open(os.path.join(out_dir, "DATA_CARD.md"), "w") as fh:
        fh.write(text)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", default=DEFAULT_SRC, help="openclipart-png PNG root")
    ap.add_argument("--out", default=os.path.join(REPO_ROOT, "data", "clipart"), help="output directory")
    ap.add_argument("--area-budget", type=int, default=112 * 112, help="max width*height of an output image")
    ap.add_argument("--max-per-class", type=int, default=300)
    ap.add_argument("--min-per-class", type=int, default=40, help="drop classes with fewer images")
    ap.add_argument("--test-frac", type=float, default=0.1)
    ap.add_argument("--min-test", type=int, default=10)
    ap.add_argument("--hash-threshold", type=int, default=12, help="near-duplicate Hamming distance (of 256 bits)")
    ap.add_argument(
        "--variant-threshold",
        type=int,
        default=32,
        help="Hamming distance (of 256 bits) for colour variants with the same name",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--dropped-log", help="write one JSON line per dropped source file to this path")
    ap.add_argument("--no-trim", action="store_true", help="keep the full canvas (no background trim)")
    ap.add_argument("--no-overview", dest="overview", action="store_false", help="skip docs/clipart_overview.png")
    build(ap.parse_args(argv))


if __name__ == "__main__":
    main()
