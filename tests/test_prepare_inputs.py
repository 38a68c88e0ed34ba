"""prepare on hostile inputs: huge or bomb images, broken links, empty sources, bad JSONL, bad arguments."""

import json
import struct
import zlib

import numpy as np
import pytest
from imagegen import make_class_folder, shapes_image
from PIL import Image, ImageFile

from fitv2.data import images as image_reading
from fitv2.data.dataset import TokenDataset
from fitv2.data.images import SkipImage, channel_std, load_rgb
from fitv2.data.prepare import prepare
from fitv2.data.sources import list_jsonl
from fitv2.errors import ConfigError, MissingFileError, UserError


def png_header(path, width: int, height: int):
    """A PNG whose header claims width × height RGB pixels, with almost no data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )
    return path


def _run(images, tmp_path, **kwargs):
    return prepare(images, tmp_path / "tokens", patch_size=4, budget=32, workers=1, progress=False, **kwargs)


def test_the_size_is_checked_from_the_header_before_decoding(tmp_path, monkeypatch):
    shapes_image(0, 64, 48, np.random.default_rng(0)).save(tmp_path / "big.png")
    monkeypatch.setattr(image_reading, "MAX_PIXELS", 64 * 48 - 1)

    def no_decoding(self):
        raise AssertionError("decoded an image over the pixel limit")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(SkipImage) as err:
        load_rgb(tmp_path / "big.png")
    assert err.value.reason == "too large" and err.value.detail.startswith("64x48 pixels")
    assert str(err.value).startswith("too large (64x48 pixels")


@pytest.mark.parametrize(
    "width,height,shown",
    [
        (8193, 8192, "8193x8192 pixels"),  # just over our limit
        (9000, 9000, "9000x9000 pixels"),
        (13_000, 13_000, "169,000,000 pixels"),  # PIL warns
        (100_000, 100_000, "10,000,000,000 pixels"),
    ],
)  # PIL refuses
def test_decompression_bombs_are_too_large_not_unreadable(tmp_path, width, height, shown):
    with pytest.raises(SkipImage) as err:
        load_rgb(png_header(tmp_path / "bomb.png", width, height))
    assert err.value.reason == "too large" and shown in err.value.detail


def test_too_large_images_are_counted_under_one_reason(tmp_path):
    images = make_class_folder(tmp_path / "images", classes=1, per_class=3)
    png_header(images / "class_0" / "bomb.png", 100_000, 100_000)
    png_header(images / "class_0" / "huge.png", 9000, 9000)
    report = _run(images, tmp_path)
    assert report.images == 3 and report.skipped == {"too large": 2}
    assert any("bomb.png (10,000,000,000 pixels" in e for e in report.examples["too large"])
    index = json.loads((tmp_path / "tokens" / "index.json").read_text())
    assert index["skipped"] == {"too large": 2}


def test_channel_std_and_uniform_colours(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (30, 20, 3), dtype=np.uint8)
    np.testing.assert_allclose(channel_std(Image.fromarray(arr)), arr.reshape(-1, 3).std(0), rtol=1e-9)
    images = make_class_folder(tmp_path / "images", classes=1, per_class=2)
    Image.new("RGB", (40, 40), (200, 30, 30)).save(images / "class_0" / "red.png")  # uniform, but not grey
    assert _run(images, tmp_path).skipped == {"blank (uniform colour)": 1}


def test_broken_links_are_counted_and_links_to_images_work(tmp_path):
    images = make_class_folder(tmp_path / "images", classes=2, per_class=2)
    (images / "class_0" / "gone.png").symlink_to(tmp_path / "deleted.png")
    (images / "class_1" / "linked.png").symlink_to(images / "class_0" / "img_000.png")
    report = _run(images, tmp_path)
    assert report.images == 5 and report.skipped == {"broken link": 1}
    ds = TokenDataset(tmp_path / "tokens")
    sources = [ds.source(g) for g in range(len(ds))]
    assert any(s.endswith("linked.png") for s in sources)


def test_a_jsonl_row_naming_a_missing_file_is_skipped(tmp_path):
    make_class_folder(tmp_path / "images", classes=1, per_class=2)
    rows = [
        {"path": "images/class_0/img_000.png", "label": 0},
        {"path": "images/class_0/img_001.png", "label": 0},
        {"path": "images/nope.png", "label": 0},
    ]
    (tmp_path / "list.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = prepare(tmp_path / "list.jsonl", tmp_path / "tokens", workers=1, progress=False)
    assert report.images == 2 and report.skipped == {"missing file": 1}


def test_sources_without_images_are_user_errors(tmp_path):
    empty = tmp_path / "empty"
    (empty / "cats").mkdir(parents=True)
    (empty / "dogs").mkdir()
    with pytest.raises(UserError, match="hold no files"):
        _run(empty, tmp_path)
    flat = tmp_path / "flat"
    flat.mkdir()
    shapes_image(0, 40, 40, np.random.default_rng(0)).save(flat / "a.png")
    with pytest.raises(UserError, match="no class sub-folders; put the images in one sub-folder per class"):
        _run(flat, tmp_path)
    junk = tmp_path / "junk"
    (junk / "a").mkdir(parents=True)
    (junk / "a" / "notes.txt").write_text("not an image")
    Image.new("RGB", (1, 1)).save(junk / "a" / "dot.png")
    with pytest.raises(UserError, match=r"no usable images in .*junk: all 2 files were skipped") as err:
        _run(junk, tmp_path)
    assert "1 not an image" in str(err.value) and "1 degenerate size" in str(err.value)
    assert not (tmp_path / "tokens").exists()
    with pytest.raises(MissingFileError):
        _run(tmp_path / "nowhere", tmp_path)


@pytest.mark.parametrize(
    "line,message",
    [
        ("{not json", "line 3 is not JSON"),
        ('["a.png", 0]', "line 3 is not a JSON object"),
        ('{"label": 0}', "line 3 has no 'path'"),
        ('{"path": "a.png"}', "line 3 has no 'label'"),
        ('{"path": "a.png", "label": "cat"}', "line 3: 'label' must be a class number"),
        ('{"path": "a.png", "label": 1.5}', "line 3: 'label' must be a class number"),
        ('{"path": "a.png", "label": true}', "line 3: 'label' must be a class number"),
        ('{"path": "a.png", "label": -1}', "line 3: 'label' must be 0 or more"),
        ('{"path": 7, "label": 0}', "line 3: 'path' must be a file name"),
        ('{"path": "a.png", "label": 0, "caption": 5}', "line 3: 'caption' must be a string"),
    ],
)
def test_bad_jsonl_lines_name_their_line(tmp_path, line, message):
    listing = tmp_path / "list.jsonl"
    listing.write_text('{"path": "b.png", "label": "1"}\n\n' + line + "\n")  # a blank line still counts
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("[", r"\[")):
        list_jsonl(listing)


def test_jsonl_labels_and_class_files(tmp_path):
    listing = tmp_path / "list.jsonl"
    listing.write_text('{"path": "a.png", "label": 0}\n{"path": "b.png", "label": "2", "class_name": "two"}\n')
    sources, classes = list_jsonl(listing)
    assert [s.label for s in sources] == [0, 2] and classes == ["0", "1", "two"]
    (tmp_path / "classes.json").write_text('["zero", "one"]')
    with pytest.raises(UserError, match=r"uses label 2 but .*classes\.json names only 2 classes"):
        list_jsonl(listing)
    binary = tmp_path / "photo.jsonl"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    with pytest.raises(UserError, match="is not a JSONL text file"):
        prepare(binary, tmp_path / "tokens", workers=1, progress=False)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(patch_size=0), "patch_size must be an integer >= 1"),
        (dict(budget=0), "budget must be an integer >= 1"),
        (dict(budget=30), "budget side 30 must be a multiple of patch × down-sampling = 4 × 1 = 4"),
        (dict(min_tokens=0), "min_tokens must be an integer >= 1"),
        (dict(min_tokens=65), "min_tokens 65 exceeds the 64 tokens of the budget"),
        (dict(workers=0), "workers must be an integer >= 1"),
        (dict(patch_size=2.5), "patch_size must be an integer"),
        (dict(min_std=-1), "min_std must be a number >= 0"),
    ],
)
def test_invalid_arguments_are_config_errors(tmp_path, kwargs, message):
    args = dict(patch_size=4, budget=32, workers=1, progress=False) | kwargs
    with pytest.raises(ConfigError, match=message):
        prepare(tmp_path / "nowhere", tmp_path / "tokens", **args)
