"""`fdhclean inspect`: a contact sheet of chosen samples of a run.

Each tile: the image and the body-part map (E_mask pixels coloured by the part of their CSE
vertex, via the run's part table; the lowest part bit wins on borders), both with the original
(red) and the estimated (blue) skeleton; the chosen one is drawn on top, thicker, and starred in
the caption (key, status, both fracs and counts). Only the keypoints the vote considered are
drawn (v above the run's threshold, inside the image), each on its pixel
(floor(x * 160), floor(y * 288)) — the project's one pixel rule (refine-spec 3).
Images come straight from the cleaned shards; only the shards holding the samples are read.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fdhclean.fdh import (
    COCO_SKELETON,
    IMAGE_H,
    IMAGE_W,
    NUM_KEYPOINTS,
    PART_NAMES,
)
from fdhclean.inspect.common import read_run_record
from fdhclean.parts import PartTable

ORIG_COLOR = (230, 25, 25)
EST_COLOR = (20, 110, 255)
BACKGROUND = (255, 255, 255)
CAPTION_LINE = 13
CAPTION_H = 3 * CAPTION_LINE + 3
GAP = 6


@dataclass(frozen=True)
class SheetStyle:
    scale: int = 1  # screen pixels per image pixel
    columns: int = 4
    orig_min_score: float = 0.0
    new_min_score: float = 0.3


@dataclass
class Tile:
    key: str
    image_origin: tuple[int, int]  # top-left of the image panel in the sheet
    parts_origin: tuple[int, int]  # top-left of the part-map panel


@dataclass
class Sheet:
    image: object  # PIL.Image.Image
    tiles: list[Tile] = field(default_factory=list)
    scale: int = 1


def part_palette(n: int = len(PART_NAMES)) -> np.ndarray:
    """n distinct colours (uint8 (n, 3)), golden-ratio hues."""
    rgb = [colorsys.hsv_to_rgb((0.11 + i * 0.618034) % 1.0, 0.55, 0.95) for i in range(n)]
    return (np.array(rgb) * 255).round().astype(np.uint8)


def part_map(image, emask, vertices, table: PartTable) -> np.ndarray:
    """uint8 (H, W, 3): the image darkened, E_mask pixels coloured by their first part."""
    out = (np.asarray(image, dtype=np.float64) * 0.3).astype(np.uint8)
    ids = np.where(emask, vertices, 0)
    inside = emask & (ids >= 0) & (ids < table.num_vertices)
    masks = np.where(inside, table.vertex_parts[np.clip(ids, 0, table.num_vertices - 1)], 0)
    lowest = masks & (~masks + np.uint32(1))  # the lowest set bit
    index = np.log2(np.maximum(lowest, 1)).astype(np.intp)
    palette = part_palette(len(table.part_names))
    coloured = inside & (masks > 0)
    out[coloured] = palette[index[coloured]]
    out[emask & ~coloured] = (128, 128, 128)  # surface without a part (or an id out of range)
    return out


def drawn_keypoints(kp: np.ndarray | None, min_score: float) -> np.ndarray:
    """Bool (17,): the keypoints the vote considered (v > threshold, inside the image)."""
    if kp is None:
        return np.zeros(NUM_KEYPOINTS, dtype=bool)
    x, y, v = kp[:, 0], kp[:, 1], kp[:, 2]
    with np.errstate(invalid="ignore"):
        return (v > min_score) & (x >= 0) & (x < 1) & (y >= 0) & (y < 1)


def keypoint_pixels(kp: np.ndarray, scale: int) -> np.ndarray:
    """Sheet-pixel centres (17, 2) of normalised keypoints: floor(x * W) * s + s // 2."""
    safe = np.nan_to_num(np.asarray(kp, dtype=np.float64)[:, :2])
    px = np.floor(safe * np.array([IMAGE_W, IMAGE_H])).astype(np.int64)
    return px * scale + scale // 2


def _draw_skeleton(draw, origin, kp, shown, color, scale, chosen, stage) -> None:
    centres = keypoint_pixels(kp, scale) + np.array(origin)
    if stage == "lines":
        width = (2 if chosen else 1) * scale
        for a, b in COCO_SKELETON:
            if shown[a - 1] and shown[b - 1]:
                draw.line([tuple(centres[a - 1]), tuple(centres[b - 1])], fill=color, width=width)
        return
    radius = (3 if chosen else 2) * scale
    for (cx, cy), show in zip(centres.tolist(), shown, strict=True):
        if show:
            draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=color)


def draw_tile(sheet_image, tile: Tile, sample: dict, row: dict, style: SheetStyle) -> None:
    """Paste both panels of one sample and draw both skeletons and the caption."""
    from PIL import Image, ImageDraw

    s = style.scale
    size = (IMAGE_W * s, IMAGE_H * s)
    for origin, panel in (
        (tile.image_origin, sample["image"]),
        (tile.parts_origin, sample["parts"]),
    ):
        sheet_image.paste(Image.fromarray(panel).resize(size, Image.Resampling.NEAREST), origin)
    draw = ImageDraw.Draw(sheet_image)
    orig, new = row["orig"], row["new"]
    sides = [
        (orig, drawn_keypoints(orig, style.orig_min_score), ORIG_COLOR, not row["updated"]),
        (new, drawn_keypoints(new, style.new_min_score), EST_COLOR, bool(row["updated"])),
    ]
    sides.sort(key=lambda side: side[3])  # the chosen one last, on top
    for stage in ("lines", "points"):
        for origin in (tile.image_origin, tile.parts_origin):
            for kp, shown, color, chosen in sides:
                if kp is not None:
                    _draw_skeleton(draw, origin, kp, shown, color, s, chosen, stage)
    _caption(draw, tile, row, style)


def _caption(draw, tile: Tile, row: dict, style: SheetStyle) -> None:
    from PIL import ImageFont

    font = ImageFont.load_default(size=11)
    x, y = tile.image_origin[0], tile.image_origin[1] + IMAGE_H * style.scale + 2
    status = row["status"] + (" tie" if row["tie"] else "")
    draw.text((x, y), f"{row['key']}  {status}", fill=(0, 0, 0), font=font)
    for i, (side, color, chosen) in enumerate(
        (("orig", ORIG_COLOR, not row["updated"]), ("new", EST_COLOR, bool(row["updated"]))), 1
    ):
        frac, correct, considered = (row[f"{side}_{n}"] for n in ("frac", "correct", "considered"))
        score = (
            "-" if frac is None or frac != frac else f"{frac:.2f} ({correct:.0f}/{considered:.0f})"
        )
        label = "original" if side == "orig" else "estimate"
        text = f"{'* ' if chosen else '  '}{label} {score}"
        draw.text((x, y + i * CAPTION_LINE), text, fill=color, font=font)


def render_sheet(rows: list[dict], samples: dict[str, dict], style: SheetStyle) -> Sheet:
    """Lay the tiles out in a grid (report order) and draw them."""
    from PIL import Image

    s = style.scale
    columns = max(1, min(style.columns, len(rows)))
    grid_rows = max(1, -(-len(rows) // columns))
    tile_w, tile_h = 2 * IMAGE_W * s + GAP, IMAGE_H * s + CAPTION_H
    size = (GAP + columns * (tile_w + GAP), GAP + grid_rows * (tile_h + GAP))
    sheet = Sheet(Image.new("RGB", size, BACKGROUND), scale=s)
    for i, row in enumerate(rows):
        x = GAP + (i % columns) * (tile_w + GAP)
        y = GAP + (i // columns) * (tile_h + GAP)
        tile = Tile(row["key"], (x, y), (x + IMAGE_W * s + GAP, y))
        draw_tile(sheet.image, tile, samples[row["key"]], row, style)
        sheet.tiles.append(tile)
    return sheet


def build_sheet(
    split: Path,
    *,
    where: str | None = None,
    keys: list[str] | None = None,
    limit: int = 16,
    scale: int = 1,
    columns: int = 4,
    part_table: Path | None = None,
) -> Sheet:
    """The contact sheet of `OUT/S`'s samples matching `where` / `keys` (first `limit`)."""
    from fdhclean.inspect.common import run_part_table
    from fdhclean.inspect.select import load_samples, select_rows, with_keypoints

    if scale < 1 or columns < 1 or limit < 1:
        raise ValueError("--scale, --columns and --limit must be >= 1")
    table = run_part_table(split, part_table)
    frame = select_rows(split, where, keys, limit)
    if frame.empty:
        raise ValueError(f"no sample of {split} matches (where={where!r}, keys={keys})")
    rows = with_keypoints(split, frame)
    settings = read_run_record(split)["settings"]
    style = SheetStyle(
        scale=scale,
        columns=columns,
        orig_min_score=float(settings["orig_min_score"]),
        new_min_score=float(settings["new_min_score"]),
    )
    return render_sheet(rows, load_samples(split, rows, table), style)
