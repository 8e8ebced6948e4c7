"""`fdhclean refine`: clean one split's keypoints (refine-spec sections 3-6)."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Clean the keypoints of one FDH split: estimate (or read precomputed) COCO-17 keypoints, score
the original and the estimated annotation by how many keypoints land on the right SMPL body part
(per-pixel CSE vertex ids -> part table), keep the better one, and write OUT/SPLIT/ with the
cleaned shards (same names, samples and order; untouched members byte for byte), a parquet
report per shard (OUT/SPLIT/report/, one row per sample, failures included), and, once every
shard is complete, OUT/SPLIT/manifest.json.

Settings come from flags, else FDHCLEAN_<NAME> environment variables, else the [refine] table
of a TOML config file (--config, $FDHCLEAN_CONFIG, ./fdhclean.toml or
~/.config/fdhclean/config.toml), so `fdhclean refine --split train` works once the rest is
configured (see pipelines/fdh_refine.toml). Rerunning the same command resumes: completed shards
are skipped. Exit status: 0 when every shard of this rank succeeded, 1 when a shard failed
(the others still finish), 2 on bad settings."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "refine",
        help="clean one split's keypoints (ViTPose vote)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--split", help="train or val")
    p.add_argument("--config", help="TOML config file with a [refine] table")
    p.add_argument("--data-root", help="FDH root holding SPLIT/out-*.tar")
    p.add_argument("--out", help="output root (OUT/SPLIT/ is written)")
    p.add_argument("--part-table", help="vertex -> part table (.npz, `fdhclean parts build`)")
    src = p.add_argument_group("estimates (exactly one of --predictions / --estimator)")
    src.add_argument("--predictions", help="COCO results JSON (`fdhclean estimate` output)")
    from fdhclean.estimators import ESTIMATORS  # cheap: backends import their libraries lazily

    src.add_argument("--estimator", help=f"one of {', '.join(sorted(ESTIMATORS))}")
    src.add_argument(
        "--estimator-option",
        dest="estimator_options",
        action="append",
        metavar="KEY=VALUE",
        help="backend option (repeatable), e.g. decoding=mmpose1 or frame=official; "
        "VALUE is JSON or text",
    )
    src.add_argument("--checkpoint", help="local weights of the estimator")
    src.add_argument("--checkpoint-sha256", help="expected sha256 of the weights")
    src.add_argument("--batch-size", type=int, help="estimator batch size (default 32)")
    src.add_argument("--device", help="auto, cpu, cuda, cuda:N (default auto)")
    src.add_argument(
        "--no-flip-test",
        dest="flip_test",
        action="store_false",
        default=None,
        help="disable the flip test of the estimator",
    )
    vote = p.add_argument_group("vote")
    vote.add_argument("--orig-min-score", type=float, help="original v threshold (default 0.0)")
    vote.add_argument("--new-min-score", type=float, help="estimate score threshold (default 0.3)")
    vote.add_argument("--tie-policy", choices=("new", "original"), help="default new")
    vote.add_argument("--rules", help="TOML keypoint -> accepted parts table")
    run = p.add_argument_group("execution")
    run.add_argument(
        "--rank", type=int, help="this rank (default $FDHCLEAN_RANK, [refine] rank, $RANK, else 0)"
    )
    run.add_argument(
        "--world-size",
        type=int,
        help="number of ranks (default: as --rank, else 1)",
    )
    run.add_argument(
        "--workers",
        type=int,
        help="worker processes, each cleaning whole shards; with --estimator each holds its own "
        "model replica on --device (default 0: all in this process)",
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        default=None,
        help="redo every shard if OUT was made with other settings",
    )
    run.add_argument("--dry-run", action="store_true", help="print the resolved settings and stop")
    p.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fdhclean.refine.settings import resolve_settings

    console = Console(stderr=True)
    flags = {k: v for k, v in vars(args).items() if k not in ("func", "config", "dry_run")}
    try:  # rank: --rank > $FDHCLEAN_RANK > [refine] rank > torchrun's $RANK > 0
        settings = resolve_settings(flags, args.config)
    except (ValueError, OSError) as exc:
        console.print(f"[red]fdhclean refine: {exc}[/red]")
        return 2
    if args.dry_run:
        for name, value in vars(settings).items():
            console.print(f"{name} = {value}")
        return 0
    return _run(settings, console)


def _run(settings, console) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from fdhclean.refine.runner import ConfigurationMismatchError, run_refine
    from fdhclean.refine.signals import RefineInterrupted

    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task, samples = None, 0  # the bar appears once the run knows its shards

        def on_shard(result, total: int) -> None:
            nonlocal samples, task
            if result is None:
                name = f"refine {settings.split} rank {settings.rank}"
                task = progress.add_task(name, total=total)
                return
            samples += result.samples
            description = f"refine {settings.split}: {samples} samples, last {result.shard}"
            progress.update(task, advance=1, description=description)

        try:
            outcome = run_refine(settings, progress=on_shard)
        except RefineInterrupted as exc:
            _print_interrupted(exc, settings, console)
            return exc.exit_code
        except (ConfigurationMismatchError, ValueError) as exc:
            console.print(f"[red]fdhclean refine: {exc}[/red]")
            return 2
        except OSError as exc:  # OUT read-only, disk full, a path that is not a directory...
            console.print(
                f"[red]fdhclean refine: cannot set up {settings.split_out}: {exc}; choose an "
                "--out that is writable and has free space[/red]"
            )
            return 2
    _print_outcome(outcome, settings, console)
    return outcome.exit_code


def _print_interrupted(exc, settings, console) -> None:
    done = len(exc.outcome.results) if exc.outcome is not None else 0
    console.print(
        f"[red]fdhclean refine: {exc} after {done} shard(s) of this run were cleaned; the "
        "shards in progress were abandoned (no completion marker). Rerun the same command "
        f"to resume into {settings.split_out}.[/red]"
    )


def _print_outcome(outcome, settings, console) -> None:
    from fdhclean.refine.finalize import sum_totals
    from fdhclean.refine.runner import summary_lines

    busy = f", {len(outcome.busy)} in use by another process" if outcome.busy else ""
    console.print(
        f"shards: {len(outcome.results)} cleaned, {len(outcome.skipped)} already "
        f"complete, {len(outcome.failed)} failed{busy}"
    )
    for name, message in outcome.failed.items():
        console.print(f"[red]FAILED {name}: {message}[/red]")
    for message in outcome.busy.values():
        console.print(f"[yellow]IN USE {message}[/yellow]")
    for result in outcome.results:
        if result.units_ambiguous:
            console.print(f"[yellow]units of {result.shard}: {result.units_ambiguous}[/yellow]")
    if outcome.manifest is not None:
        totals = outcome.manifest.totals
        scope = f"split {settings.split} (all shards)"
        console.print(f"manifest: {settings.split_out / 'manifest.json'}")
    else:
        totals = sum_totals(outcome.results)
        scope = f"this run's shards ({outcome.pending_elsewhere} shards pending on other ranks)"
    console.print(f"summary of {scope}:")
    for line in summary_lines(totals):
        print(line)
    console.print(f"report: {settings.split_out / 'report'}")
