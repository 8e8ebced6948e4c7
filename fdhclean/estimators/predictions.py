"""Precomputed pose predictions in COCO results format (refine-spec section 7).

`[{"image_id": int(key), "category_id": 1, "keypoints": [x, y, score] * 17, "score": s}]`,
x, y in pixels of the 288x160 image (pixel i covers [i, i+1)). Several entries for one image:
the highest `score` wins (the first on a tie). Entries for keys outside the split are counted
and reported by the caller, not an error.

Keys are sample keys (integer strings); they are matched through `canonical_key` (str(int(k))),
so a key written with leading zeros still finds its entry.

Files are read as a stream (`iter_coco_results`: one entry decoded at a time, a bounded
buffer), never as one `json.load` of the whole split, and written as a stream
(`CocoResultsWriter`); `fdhclean.predictions_store` turns a file into a columnar store once.
"""

from __future__ import annotations

import codecs
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from fdhclean import fdh
from fdhclean.atomic import atomic_open
from fdhclean.estimators.weights import sha256_file

_NUM_VALUES = 3 * fdh.NUM_KEYPOINTS
_CHUNK = 1 << 20  # bytes read at a time
_MAX_ENTRY = 64 << 20  # one COCO result is ~0.5 kB; a bigger "entry" is a malformed file
_WS = re.compile(r"[ \t\n\r]*")


def canonical_key(key: str | int) -> str:
    """The form a COCO `image_id` takes back as a sample key: str(int(key))."""
    try:
        return str(int(key))
    except (TypeError, ValueError):
        raise ValueError(f"sample key {key!r} is not an integer string (COCO image_id)") from None


@dataclass
class Predictions:
    keypoints: dict[str, np.ndarray]  # canonical key -> float32 (17, 3) pixels + score
    sha256: str  # of the file
    num_entries: int
    num_duplicates: int  # entries that lost against a higher-scoring one for the same image
    scores: dict[str, float] = field(default_factory=dict)  # the winning entry's overall score

    def get(self, key: str) -> np.ndarray | None:
        """The (17, 3) prediction for a sample key, or None when there is none."""
        try:
            return self.keypoints.get(canonical_key(key))
        except ValueError:
            return None


class InvalidImageId(ValueError):
    """An entry whose `image_id` is not an integer: no sample key can match it."""


def parse_entry(i: int, entry: Any, path: Path) -> tuple[int, np.ndarray, float]:
    """(integer key, float32 (17, 3), score) of entry `i`; a ValueError naming file and entry
    when it is malformed (InvalidImageId when only its image_id is not an integer)."""
    where = f"{path}: entry {i}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where} is a {type(entry).__name__}, expected an object")
    for name in ("image_id", "keypoints", "score"):
        if name not in entry:
            raise ValueError(f"{where} has no {name!r}")
    if entry.get("category_id", 1) != 1:
        raise ValueError(f"{where}: category_id {entry['category_id']!r} is not 1 (person)")
    values = entry["keypoints"]
    if not isinstance(values, list) or len(values) != _NUM_VALUES:
        n = len(values) if isinstance(values, list) else type(values).__name__
        raise ValueError(f"{where}: keypoints must be a list of {_NUM_VALUES} numbers, got {n}")
    try:
        kps = np.asarray(values, dtype=np.float64).reshape(fdh.NUM_KEYPOINTS, 3)
        score = float(entry["score"])
    except (TypeError, ValueError):
        raise ValueError(f"{where}: keypoints/score are not all numbers") from None
    if not np.isfinite(kps).all() or not math.isfinite(score):
        raise ValueError(f"{where}: keypoints/score contain NaN or infinity")
    return _image_key(entry["image_id"], where), kps.astype(np.float32), score


def _image_key(image_id: Any, where: str) -> int:
    # int64: the store's key column; a YFCC100M id fits with room to spare
    try:
        if isinstance(image_id, bool) or not isinstance(image_id, int | str):
            raise ValueError
        key = int(image_id)
        if not -(2**63) <= key < 2**63:
            raise ValueError
    except ValueError:
        raise InvalidImageId(f"{where}: image_id {image_id!r} is not an integer") from None
    return key


class _TextStream:
    """UTF-8 text of a binary file, decoded chunk by chunk; the error names file and byte."""

    def __init__(self, f: IO[bytes], path: Path) -> None:
        self.f, self.path = f, path
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")("strict")
        self.bytes_read = 0
        self.eof = False

    def read(self) -> str:
        chunk = self.f.read(_CHUNK)
        self.eof = not chunk
        try:
            text = self.decoder.decode(chunk, final=self.eof)
        except UnicodeDecodeError as e:
            at = self.bytes_read + e.start - len(self.decoder.getstate()[0])
            raise ValueError(
                f"{self.path} is not UTF-8 text (undecodable byte near offset {max(at, 0)}): "
                "COCO results are UTF-8 JSON; re-encode the file or write it again"
            ) from None
        self.bytes_read += len(chunk)
        return text


def _check_path(path: Path) -> None:
    if path.is_dir():
        raise ValueError(
            f"{path} is a directory, not a COCO results file: give the .json file "
            "(or a prediction store directory with a store.json)"
        )
    if not path.exists():
        raise FileNotFoundError(f"predictions file {path} does not exist")


def iter_coco_results(path: str | Path) -> Iterator[Any]:
    """Yield the elements of the JSON array in `path` one by one, with bounded memory.

    Any problem (not UTF-8, not a JSON list, an entry nested too deeply or malformed, data
    after the list) raises a ValueError naming the file and the entry."""
    path = Path(path)
    _check_path(path)
    decoder = json.JSONDecoder()
    with open(path, "rb") as f:
        stream = _TextStream(f, path)
        buf, pos, index, offset = "", 0, 0, 0  # offset: characters dropped before buf

        def more() -> bool:
            nonlocal buf, pos, offset
            if stream.eof:
                return False
            offset += pos
            buf, pos = buf[pos:] + stream.read(), 0
            return True

        def skip_ws() -> str:
            nonlocal pos
            while True:
                pos = _WS.match(buf, pos).end()
                if pos < len(buf) or not more():
                    return buf[pos : pos + 1]

        first = skip_ws()
        if first != "[":
            got = {"{": "an object", "": "an empty file"}.get(first, f"text starting {first!r}")
            raise ValueError(f"{path}: expected a JSON list of COCO results, got {got}")
        pos += 1
        while True:
            c = skip_ws()
            if c == "]":
                pos += 1
                break
            if index:
                if c != ",":
                    raise _syntax(path, index, offset + pos, "expected ',' or ']'", c)
                pos += 1
                skip_ws()
            while True:
                try:
                    value, end = decoder.raw_decode(buf, pos)
                except json.JSONDecodeError as e:
                    if len(buf) - pos <= _MAX_ENTRY and more():
                        continue  # the entry goes on past the buffer
                    raise _syntax(path, index, offset + e.pos, e.msg, None) from None
                except RecursionError:
                    raise ValueError(
                        f"{path}: entry {index} is nested too deeply to be a COCO result "
                        "(a COCO result is a flat object with a keypoints list)"
                    ) from None
                if end == len(buf) and more():
                    continue  # a number cut at the buffer's end: decode it whole
                break
            pos = end
            yield value
            index += 1
        if skip_ws():
            raise _syntax(path, index, offset + pos, "data after the list", None)


def _syntax(path: Path, index: int, at: int, msg: str, got: str | None) -> ValueError:
    found = f" (found {got!r})" if got else ""
    return ValueError(
        f"{path} is not valid JSON at entry {index} (character {at}): {msg}{found}; "
        "a COCO results file is one JSON list of objects"
    )


def load_predictions(path: str | Path) -> Predictions:
    """Read a COCO results file into memory (small files and tests; refine uses the store);
    malformed entries raise a ValueError naming file and entry."""
    path = Path(path)
    keypoints: dict[str, np.ndarray] = {}
    scores: dict[str, float] = {}
    duplicates = n = 0
    for n, entry in enumerate(iter_coco_results(path), start=1):
        int_key, kps, score = parse_entry(n - 1, entry, path)
        key = str(int_key)
        if key in keypoints:
            duplicates += 1
            if score <= scores[key]:
                continue
        keypoints[key], scores[key] = kps, score
    return Predictions(keypoints, sha256_file(path), n, duplicates, scores)


def _number(v: np.float32) -> float:
    """Shortest decimal that reads back as the same float32 (keeps files small and exact)."""
    return float(np.format_float_positional(v, unique=True, trim="0"))


class CocoResultsWriter:
    """Write COCO results entry by entry (bounded memory), atomically on `close()`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._ctx = atomic_open(self.path, "w")
        self._f = self._ctx.__enter__()
        self._f.write("[")
        self.count = 0

    def add(self, key: str | int, kps: np.ndarray, score: float) -> None:
        kps = np.asarray(kps, dtype=np.float32)
        if kps.shape != (fdh.NUM_KEYPOINTS, 3):
            raise ValueError(f"keypoints for key {key!r} have shape {kps.shape}, expected (17, 3)")
        entry = {
            "image_id": int(canonical_key(key)),
            "category_id": 1,
            "keypoints": [_number(v) for v in kps.reshape(-1)],
            "score": _number(np.float32(score)),
        }
        self._f.write(("," if self.count else "") + json.dumps(entry, separators=(",", ":")))
        self.count += 1

    def close(self) -> None:
        self._f.write("]")
        self._ctx.__exit__(None, None, None)

    def abort(self, exc: BaseException | None = None) -> None:
        """Drop the temporary file (the target is left as it was)."""
        exc = exc or RuntimeError("aborted")
        self._ctx.__exit__(type(exc), exc, exc.__traceback__)

    def __enter__(self) -> CocoResultsWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close()
        else:
            self.abort(exc)


def write_predictions(path: str | Path, items: Iterable[tuple[str, np.ndarray, float]]) -> None:
    """Write (key, float32 (17, 3) pixels + score, overall score) as COCO results, atomically."""
    with CocoResultsWriter(path) as writer:
        for key, kps, score in items:
            writer.add(key, kps, score)


def count_foreign(pred: Predictions, split_keys: set[str]) -> int:
    """Number of predicted images whose key is not in the split (reported, not an error)."""
    canonical = set()
    for key in split_keys:
        try:
            canonical.add(canonical_key(key))
        except ValueError:
            continue
    return sum(1 for key in pred.keypoints if key not in canonical)
