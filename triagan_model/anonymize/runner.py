"""Files, folders and videos for `triagan anonymize` (anonymize-spec 4.7, 4.8).

Inputs are files or directories (recursive, sorted); `OUT` mirrors their relative paths, may
not lie inside an input nor contain one, and no output may resolve to an input. Each rank
(`--rank/--world-size`) takes every world_size-th file. A file whose output and completion
marker (`OUT/.done/<rel>.json`, holding its report rows, the settings fingerprint and the
input's size and mtime) exist and match is skipped, so rerunning the same command resumes and
an edited input is redone; outputs are written atomically. A file that fails (unreadable,
detections of the wrong size, ...) gets a `failed` row with the message, no output, and the run
goes on with exit status 1.
Reports: `OUT/report/persons/persons-{rank}.parquet` (a row per person per frame) and
`OUT/report/files/files-{rank}.parquet` (a row per file), rebuilt from the markers;
`OUT/summary.json` (or `summary-{rank}.json` under several ranks) and `OUT/run.json`; reports of
ranks >= world_size (left by an earlier run with more ranks) are removed. The summary's rates
count only the files processed by this run.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from triagan_model.anonymize import media
from triagan_model.anonymize.api import Anonymizer
from triagan_model.anonymize.detectors import DetectionError
from triagan_model.anonymize.identity import ConfigError
from triagan_model.atomic import atomic_path


@dataclass(frozen=True)
class Item:
    path: Path
    rel: str  # posix path relative to its input root; also the detections' file_name

    @property
    def kind(self) -> str:
        s = self.path.suffix.lower()
        return "video" if s in media.VIDEO_SUFFIXES else "image"


def collect(inputs: list[str], out: Path) -> list[Item]:
    """Every image and video under the inputs, sorted; refuses an OUT inside an input."""
    items: list[Item] = []
    out_r = out.resolve()
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            raise ConfigError(f"input {p} does not exist")
        if p.is_dir():
            if out_r == p.resolve() or p.resolve() in out_r.parents:
                raise ConfigError(f"--out {out} lies inside the input {p}: choose another folder")
            for f in sorted(p.rglob("*")):
                if (
                    f.is_file()
                    and f.suffix.lower() in media.IMAGE_SUFFIXES + media.VIDEO_SUFFIXES
                    and not any(part.startswith(".") for part in f.relative_to(p).parts)
                ):
                    items.append(Item(f, f.relative_to(p).as_posix()))
        else:
            items.append(Item(p, p.name))
    seen: dict[str, Path] = {}
    for it in items:
        if it.rel in seen:
            raise ConfigError(
                f"{it.path} and {seen[it.rel]} would both be written to {out / it.rel}"
            )
        seen[it.rel] = it.path
    _refuse_overwriting_inputs(items, out)
    return items


def _refuse_overwriting_inputs(items: list[Item], out: Path) -> None:
    """Outputs never replace inputs (as in `fdhclean refine`): `a.png --out .` would write its
    result over a.png, and a file input inside OUT would be mixed with the outputs."""
    inputs = {it.path.resolve(): it.path for it in items}
    out_r = out.resolve()
    for it in items:
        dst = (out / it.rel).resolve()
        if dst in inputs:
            raise ConfigError(f"--out {out} would overwrite the input {inputs[dst]} with its "
                              "anonymised copy: choose another --out folder")  # fmt: skip
        src = it.path.resolve()
        if out_r in src.parents:
            raise ConfigError(f"the input {it.path} lies inside --out {out}: choose another "
                              "--out folder")  # fmt: skip


def fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[
        :16
    ]


def _marker(out: Path, rel: str) -> Path:
    return out / ".done" / f"{rel}.json"


def _source(item: Item) -> dict[str, int]:
    """What identifies the input's content cheaply: an edited input is redone on resume."""
    st = item.path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _done(out: Path, item: Item, fp: str) -> dict | None:
    m = _marker(out, item.rel)
    if not (m.is_file() and (out / item.rel).is_file()):
        return None
    try:
        doc = json.loads(m.read_text())
    except ValueError:
        return None
    if doc.get("fingerprint") != fp or doc.get("source") != _source(item):
        return None
    return doc


def _image(anon: Anonymizer, item: Item, dst: Path, opts: dict) -> tuple[list[dict], int]:
    rgb, info = media.read_image(item.path)
    media.warn_all(info.warnings)
    result = anon.image(rgb, key=item.rel)
    t0 = time.perf_counter()
    data = media.encode_image(result.image, info, keep_metadata=opts["keep_metadata"],
                              jpeg_quality=opts["jpeg_quality"])  # fmt: skip
    media.write_bytes(dst, data)
    anon._tick("encode", t0)
    return result.persons, 1


def _video(anon: Anonymizer, item: Item, dst: Path, opts: dict) -> tuple[list[dict], int]:
    from triagan_model.anonymize.track import Tracker

    fps, _ = media.video_info(item.path)
    s = anon.settings
    tracker = Tracker(iou_gate=s.track_iou, hold_frames=s.hold_frames, max_age=max(1, round(fps)))
    rows: list[dict] = []

    def process(i: int, rgb: np.ndarray) -> np.ndarray:
        persons = tracker.step(anon.detect(rgb, item.rel, i))
        res = anon.image(rgb, key=item.rel, persons=persons, frame=i)
        rows.extend(res.persons)
        return res.image

    t0 = time.perf_counter()
    r = media.transcode_video(item.path, dst, process, codec=opts["codec"], crf=opts["crf"],
                              keep_audio=opts["keep_audio"])  # fmt: skip
    anon.timings["video_total"] = anon.timings.get("video_total", 0.0) + time.perf_counter() - t0
    return rows, r.frames_out


def process_file(anon: Anonymizer, item: Item, out: Path, fp: str, opts: dict) -> dict:
    """Anonymise one file; returns its marker document (file row + person rows)."""
    dst = out / item.rel
    t0 = time.perf_counter()
    try:
        rows, frames = (_video if item.kind == "video" else _image)(anon, item, dst, opts)
        status, error = ("ok" if rows else "no-person"), None
    except (media.MediaError, DetectionError, ValueError, OSError, RuntimeError) as exn:
        # RuntimeError: torch or PyAV failing on this file's content; the run goes on
        dst.unlink(missing_ok=True)
        rows, frames, status, error = [], 0, "failed", str(exn)
    doc = {"fingerprint": fp, "source": _source(item),
           "file": {"input": item.rel, "kind": item.kind, "status": status, "error": error,
                    "frames": frames, "persons": len(rows),
                    "seconds": round(time.perf_counter() - t0, 4)}, "persons": rows}  # fmt: skip
    if status != "failed":
        with atomic_path(_marker(out, item.rel)) as tmp:
            Path(tmp).write_text(json.dumps(doc, default=_json_default))
    return doc


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o))


def write_reports(out: Path, docs: list[dict], rank: int, world: int, elapsed: float,
                  new: list[dict] | None = None) -> dict:  # fmt: skip
    """Reports of every file of this rank (`docs`, skipped ones included); the rates count only
    `new`, the files processed by this run (default: all of `docs`)."""
    import pandas as pd

    from triagan_model.anonymize.report import persons_table

    files = pd.DataFrame([d["file"] for d in docs])
    persons = persons_table([r for d in docs for r in d["persons"]])
    for name, table in (("files", files), ("persons", persons)):
        with atomic_path(out / "report" / name / f"{name}-{rank}.parquet") as tmp:
            table.to_parquet(tmp, index=False)
    _remove_stale_reports(out, world)
    new = docs if new is None else new
    n_frames = sum(int(d["file"]["frames"]) for d in new)
    n_persons = sum(len(d["persons"]) for d in new)

    def counts(df) -> dict[str, int]:
        return {k: int(v) for k, v in df["status"].value_counts().items()} if len(df) else {}

    summary = {
        "files": counts(files),
        "persons": counts(persons),
        "frames": int(files["frames"].sum()) if len(files) else 0,
        "processed_files": len(new), "processed_frames": n_frames, "seconds": round(elapsed, 3),
        "persons_per_s": round(n_persons / elapsed, 3) if elapsed > 0 else None,
        "frames_per_s": round(n_frames / elapsed, 3) if elapsed > 0 else None,
        "rank": rank, "world_size": world,
    }  # fmt: skip
    name = "summary.json" if world == 1 else f"summary-{rank}.json"
    with atomic_path(out / name) as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _remove_stale_reports(out: Path, world: int) -> None:
    """A rerun with a smaller world size would leave ranks >= world_size's reports beside the new
    ones (and a reader of report/persons would count their files twice): remove them. Every rank
    may do it, as no rank of this world size writes those names."""
    for name in ("files", "persons"):
        for f in (out / "report" / name).glob(f"{name}-*.parquet"):
            k = f.name[len(name) + 1 : -len(".parquet")]
            if k.isdigit() and int(k) >= world:
                f.unlink(missing_ok=True)
    for f in out.glob("summary*.json"):
        k = f.stem.partition("-")[2]
        if (world == 1 and k) or (world > 1 and (not k or (k.isdigit() and int(k) >= world))):
            f.unlink(missing_ok=True)
