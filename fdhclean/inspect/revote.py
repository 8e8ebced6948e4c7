"""`fdhclean revote`: decide again from a run's report, without the estimator.

The parent run's cleaned split `OUT/S` becomes the input of an ordinary refine run into
`OUT2/S` (`RefineSettings.revote`): its report supplies the raw estimates (`new_keypoints`) and
the original annotations (`orig_keypoints`), its cleaned shards the E_mask and vertex maps, and
the refine machinery (shard tasks, resume markers, finalize) does the rest, so the new version
has shards, report, manifest (provenance.parent = `OUT/S/manifest.json`) and run.json like any
run. With the parent's settings it reproduces the parent byte for byte; error statuses stay as
they are (see `fdhclean.refine.originals.ReportOriginals` for how originals are restored).
"""

from __future__ import annotations

from pathlib import Path

from fdhclean.inspect.common import read_run_record, run_part_table
from fdhclean.refine.settings import RefineSettings
from fdhclean.rules import DEFAULT_RULES, load_rules


def revote_settings(
    parent: Path,
    out: Path,
    *,
    tie_policy: str | None = None,
    new_min_score: float | None = None,
    orig_min_score: float | None = None,
    rules: Path | None = None,
    workers: int = 0,
    overwrite: bool = False,
) -> RefineSettings:
    """Settings of a revote of the cleaned split `parent` (= OUT/S) into `out` (= OUT2).

    Unset thresholds, tie policy and rules are the parent's; the part table is the parent's
    and must still hash as it did.
    """
    record = read_run_record(parent)
    if not (parent / "manifest.json").is_file():
        raise FileNotFoundError(
            f"{parent / 'manifest.json'} is missing: finish the run (`fdhclean finalize`) first"
        )
    if Path(out).resolve() == parent.parent.resolve():
        raise ValueError(f"--out {out} is the run being revoted; give a new directory")
    previous = record["settings"]
    table_path = Path(previous["part_table"])
    run_part_table(parent)  # fails clearly when it is gone or changed
    inherited = rules is None  # a --rules FILE given now is used as it is now
    if inherited and previous.get("rules"):
        rules = Path(previous["rules"])
    if inherited:
        table = load_rules(rules) if rules else DEFAULT_RULES
        expected = record["provenance"].get("rules_sha256")
        if expected and table.sha256 != expected:
            raise ValueError(
                f"the run's rule table ({rules or 'built-in default'}) now hashes to "
                f"{table.sha256}, not {expected}; give --rules FILE"
            )
    return RefineSettings(
        split=record["split"],
        data_root=parent.parent,
        out=Path(out),
        part_table=table_path,
        rules=rules,
        orig_min_score=_pick(orig_min_score, previous["orig_min_score"]),
        new_min_score=_pick(new_min_score, previous["new_min_score"]),
        tie_policy=tie_policy or previous["tie_policy"],
        workers=workers,
        overwrite=overwrite,
        revote=True,
    )


def _pick(value: float | None, default: float) -> float:
    return float(default if value is None else value)
