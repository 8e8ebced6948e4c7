"""A columnar store of pose predictions: one key-sorted parquet file, imported once per split.

COCO results stay the interchange format (what users have, what `fdhclean estimate` can
export), but refine never holds a whole split's JSON: the file is parsed once, as a stream,
into `DIR/predictions.parquet` (`key` int64 sorted and unique, `keypoints` 51 x float32 pixels
+ score, `score` float64 of the winning entry) with `DIR/store.json` recording the sources'
sha256 and what the import counted. A store imported from JSON lives under the cache root
(`store_cache_dir`) in a folder named by the sources' sha256, so every rank, worker and
finalize of a split reuses the same import. Looking up a shard's keys reads only the row
groups whose min/max statistics can hold them.

Duplicates: the highest `score` wins, the first (file order, then entry order) on a tie, as
`load_predictions` decides. Entries whose `image_id` is not an integer can match no sample key:
they are counted (with examples) in store.json, not an error; any other malformed entry stops
the import with a message naming file and entry.
"""

from fdhclean.predictions_store.format import (
    DATA_FILE,
    STORE_FILE,
    is_store,
    source_files,
    sources_sha256,
    store_cache_dir,
)
from fdhclean.predictions_store.store import PredictionStore, StoreEstimates
from fdhclean.predictions_store.writer import StoreWriter, export_coco, import_coco, open_writer

__all__ = [
    "DATA_FILE",
    "STORE_FILE",
    "PredictionStore",
    "StoreEstimates",
    "StoreWriter",
    "export_coco",
    "import_coco",
    "is_store",
    "open_writer",
    "source_files",
    "sources_sha256",
    "store_cache_dir",
]
