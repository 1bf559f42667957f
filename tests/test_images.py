"""Images in records: read, checked, kept as PNG data URLs; bad images are one line and exit 2 with
nothing written; dedup and decontamination with images."""

from __future__ import annotations

import io
import json
import struct
import zlib

import pytest
from PIL import Image, ImageDraw

from r1lab.cli import main
from r1lab.data.dedup import DedupSettings, dedup
from r1lab.errors import DataError
from r1lab.images import (MAX_PIXELS, canonical_image, data_url_bytes, decode_image, pixel_hash, png_bytes,
                          to_data_url)
from r1lab.records import Problem, load_problems


def _png(color="red", size=(32, 24), mode="RGB") -> bytes:
    img = Image.new(mode, size, color)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _bomb_png(width=40_000, height=40_000) -> bytes:
    """A tiny PNG whose header declares width x height pixels (the IDAT holds almost nothing)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def test_canonical_image_round_trips_pixels_and_is_deterministic(tmp_path):
    img = Image.new("RGB", (20, 10), "white")
    ImageDraw.Draw(img).rectangle((2, 2, 8, 6), fill=(10, 200, 30))
    (tmp_path / "a.png").write_bytes(png_bytes(img))
    url = canonical_image("a.png", tmp_path, "row 1")
    assert url.startswith("data:image/png;base64,")
    assert decode_image(url).tobytes() == img.tobytes()
    # the same pixels as a JPEG-free re-save with other settings: the same canonical bytes and hash
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    assert canonical_image(buf.getvalue(), None, "row 2") == url
    assert pixel_hash(url) == pixel_hash(canonical_image(buf.getvalue(), None, "row 2"))


def test_transparent_and_grey_images_become_rgb_on_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red: white once composited
    url = canonical_image(png_bytes_raw(rgba), None, "r")
    assert decode_image(url).getpixel((0, 0)) == (255, 255, 255)
    grey = Image.new("L", (4, 4), 77)
    assert decode_image(canonical_image(png_bytes_raw(grey), None, "r")).getpixel((1, 1)) == (77, 77, 77)


def png_bytes_raw(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("case, message", [
    ("truncated", "damaged image"),
    ("cmyk", "image mode CMYK is not supported"),
    ("bomb", "decompression bomb"),
    ("outside", "outside the data directory"),
    ("not_an_image", "not an image file"),
    ("bad_base64", "not valid base64"),
    ("missing", "image file not found"),
])
def test_bad_images_are_one_line_errors(tmp_path, case, message):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    good = _png()
    ref: object
    if case == "truncated":
        (data_dir / "t.png").write_bytes(good[: len(good) // 2])
        ref = "t.png"
    elif case == "cmyk":
        buf = io.BytesIO()
        Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(buf, format="JPEG")
        ref = buf.getvalue()
    elif case == "bomb":
        ref = _bomb_png()
    elif case == "outside":
        (tmp_path / "secret.png").write_bytes(good)
        ref = "../secret.png"
    elif case == "not_an_image":
        ref = b"hello, I am text"
    elif case == "bad_base64":
        ref = "data:image/png;base64,@@@@"
    else:
        ref = "nope.png"
    with pytest.raises(DataError) as e:
        canonical_image(ref, data_dir, "rows.jsonl:3")
    text = str(e.value)
    assert "\n" not in text and text.startswith("rows.jsonl:3") and message in text


def test_symlink_out_of_the_data_directory_is_refused(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (tmp_path / "secret.png").write_bytes(_png())
    (data_dir / "link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(DataError, match="outside the data directory"):
        canonical_image("link.png", data_dir, "r")


def test_the_pixel_limit_is_below_pillows_bomb_limit():
    assert MAX_PIXELS < Image.MAX_IMAGE_PIXELS
    with pytest.raises(DataError, match="more than"):
        canonical_image(_bomb_png(4097, 4096), None, "r")


def _rows(tmp_path, image_ref):
    (tmp_path / "imgs").mkdir(exist_ok=True)
    (tmp_path / "imgs" / "ok.png").write_bytes(_png("blue"))
    rows = [{"id": "a", "question": "how many?", "answer": "3", "image": "imgs/ok.png"},
            {"id": "b", "question": "how many now?", "answer": "4", "image": image_ref}]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_data_import_reads_the_image_column(tmp_path, capsys):
    path = _rows(tmp_path, "imgs/ok.png")
    out = tmp_path / "out.jsonl"
    assert main(["data", "import", str(path), "-o", str(out), "--quiet"]) == 0
    problems = load_problems(out)
    assert [len(p.images) for p in problems] == [1, 1]
    assert decode_image(problems[0].images[0]).getpixel((0, 0)) == (0, 0, 255)


@pytest.mark.parametrize("bad", ["../../etc/passwd", "imgs/missing.png", "data:image/png;base64,AAAA"])
def test_data_import_with_a_bad_image_exits_2_and_writes_nothing(tmp_path, capsys, bad):
    path = _rows(tmp_path, bad)
    out = tmp_path / "out.jsonl"
    assert main(["data", "import", str(path), "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "rows.jsonl:2" in err
    assert not out.exists() and not list(tmp_path.glob(".out.jsonl*")) and not (tmp_path / "out.jsonl.manifest.json").exists()


def test_data_import_reads_a_parquet_image_struct_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"question": ["count"], "answer": ["2"],
                      "image": [{"bytes": _png("green"), "path": None}]})
    pq.write_table(table, tmp_path / "rows.parquet")
    out = tmp_path / "out.jsonl"
    assert main(["data", "import", str(tmp_path / "rows.parquet"), "-o", str(out), "--quiet"]) == 0
    assert decode_image(load_problems(out)[0].images[0]).getpixel((3, 3)) == (0, 128, 0)


def test_load_problems_resolves_paths_next_to_the_file_and_refuses_escapes(tmp_path):
    (tmp_path / "x.png").write_bytes(_png())
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "1", "prompt": "q", "answer": "1", "images": ["x.png"]}) + "\n")
    assert load_problems(path)[0].images[0].startswith("data:image/png")
    path.write_text(json.dumps({"id": "1", "prompt": "q", "answer": "1", "images": ["/etc/hostname"]}) + "\n")
    with pytest.raises(DataError, match="outside the data directory"):
        load_problems(path)
    path.write_text(json.dumps({"id": "1", "prompt": "q", "answer": "1", "images": "x.png"}) + "\n")
    with pytest.raises(DataError, match="'images' must be a list"):
        load_problems(path)


def test_text_problems_keep_their_rows_unchanged():
    assert "images" not in Problem("1", "q", "1").to_dict()
    url = to_data_url(_png())
    assert Problem.from_dict(Problem("1", "q", "1", images=[url]).to_dict()).images == [url]
    assert data_url_bytes(url, "r") == _png()


def test_dedup_keeps_same_text_different_pixels_and_drops_identical_images():
    red, red_again, blue = (to_data_url(png_bytes(Image.new("RGB", (8, 8), c))) for c in ("red", "red", "blue"))
    rows = [Problem("a", "How many circles?", "3", images=[red]),
            Problem("b", "How many circles?", "3", images=[blue]),  # same text, other pixels: kept
            Problem("c", "how many  circles?", "3", images=[red_again]),  # same text and pixels: dropped
            Problem("d", "How many circles are there?", "3", images=[red])]  # near-duplicate text: kept
    dropped = []
    kept = list(dedup(rows, DedupSettings(), lambda rid, reason, keeper: dropped.append((rid, reason, keeper))))
    assert [p.id for p in kept] == ["a", "b", "d"]
    assert dropped == [("c", "exact_duplicate", "a")]


def test_data_import_reads_a_saved_hf_dataset_with_an_image_feature(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"question": ["count", "count again"], "answer": ["1", "2"],
                                     "image": [Image.new("RGB", (6, 6), "red"), Image.new("L", (6, 6), 9)]})
    ds.cast_column("image", datasets.Image()).save_to_disk(str(tmp_path / "ds"))
    out = tmp_path / "out.jsonl"
    assert main(["data", "import", str(tmp_path / "ds"), "-o", str(out), "--quiet"]) == 0
    problems = load_problems(out)
    assert decode_image(problems[0].images[0]).getpixel((0, 0)) == (255, 0, 0)
    assert decode_image(problems[1].images[0]).getpixel((0, 0)) == (9, 9, 9)
