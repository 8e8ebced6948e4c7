"""Issue 12 class 8: settings of the wrong type are refused with a message; rank and world
size are honoured from every place a setting can come from."""

from __future__ import annotations

import pytest

from fdhclean.cli import main


def _config(tmp_path, body: str):
    path = tmp_path / "fdhclean.toml"
    path.write_text(
        "[refine]\n"
        f'data_root = "{tmp_path}"\nout = "{tmp_path / "out"}"\n'
        f'part_table = "{tmp_path / "parts.npz"}"\npredictions = "{tmp_path / "p.json"}"\n' + body
    )
    return path


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "FDHCLEAN_RANK", "FDHCLEAN_WORLD_SIZE", "FDHCLEAN_CONFIG"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ("workers = 1.5", "workers"),
        ('workers = "two"', "workers"),
        ("batch_size = true", "batch_size"),
        ("split = 5", "split"),
        ("flip_test = 1", "flip_test"),
        ("new_min_score = [0.3]", "new_min_score"),
        ("workers = -1", "workers"),
        ("rank = 3\nworld_size = 2", "rank 3"),
    ],
)
def test_bad_config_values_are_refused_with_the_name(tmp_path, capsys, line, named):
    config = _config(tmp_path, line + "\n")
    split = [] if line.startswith("split") else ["--split", "val"]
    code = main(["refine", "--config", str(config), *split, "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2
    assert named in err and "Traceback" not in err


def test_a_table_where_a_path_belongs_is_refused(tmp_path, capsys):
    config = tmp_path / "fdhclean.toml"
    config.write_text("[refine]\nsplit = 'val'\n[refine.data_root]\nx = 1\n")
    assert main(["refine", "--config", str(config), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "data_root" in err and "must be a string" in err


def test_bad_environment_values_name_the_variable(tmp_path, capsys, monkeypatch):
    config = _config(tmp_path, "")
    monkeypatch.setenv("FDHCLEAN_WORKERS", "1.5")
    assert main(["refine", "--config", str(config), "--split", "val", "--dry-run"]) == 2
    assert "$FDHCLEAN_WORKERS" in capsys.readouterr().err


def _dry_run_rank(capsys, *argv) -> tuple[str, str]:
    assert main(["refine", *argv, "--split", "val", "--dry-run"]) == 0
    lines = dict(
        line.split(" = ", 1) for line in capsys.readouterr().err.splitlines() if " = " in line
    )
    return lines["rank"], lines["world_size"]


def test_rank_and_world_size_from_every_source(tmp_path, capsys, monkeypatch):
    config = _config(tmp_path, "rank = 1\nworld_size = 3\n")
    assert _dry_run_rank(capsys, "--config", str(config)) == ("1", "3")
    # torchrun's variables sit below the config file ...
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "5")
    assert _dry_run_rank(capsys, "--config", str(config)) == ("1", "3")
    # ... FDHCLEAN_* above it, flags above everything
    monkeypatch.setenv("FDHCLEAN_RANK", "2")
    monkeypatch.setenv("FDHCLEAN_WORLD_SIZE", "4")
    assert _dry_run_rank(capsys, "--config", str(config)) == ("2", "4")
    assert _dry_run_rank(capsys, "--config", str(config), "--rank", "0") == ("0", "4")
    # without any explicit setting, torchrun's RANK / WORLD_SIZE are used
    plain = _config(tmp_path, "")
    monkeypatch.delenv("FDHCLEAN_RANK")
    monkeypatch.delenv("FDHCLEAN_WORLD_SIZE")
    assert _dry_run_rank(capsys, "--config", str(plain)) == ("0", "5")


def test_config_rank_splits_the_shards(synth_root, tmp_path):
    """A rank set in the config file really selects that rank's shards."""
    config = tmp_path / "c.toml"
    config.write_text(
        f'[refine]\ndata_root = "{synth_root}"\nout = "{tmp_path / "o"}"\n'
        f'part_table = "{synth_root / "parts.npz"}"\n'
        f'predictions = "{synth_root}/predictions_{{split}}.json"\nrank = 1\nworld_size = 2\n'
    )
    assert main(["refine", "--config", str(config), "--split", "val"]) == 0
    done = sorted(p.name for p in (tmp_path / "o" / "val").glob("out-*.tar"))
    assert done == ["out-000001.tar"]


def test_estimator_options_reach_the_backend(synth_root, tiny_vitpose, tmp_path, capsys):
    """Issue 11 item 5: `--estimator-option KEY=VALUE`; estimator names from the registry."""
    import json

    checkpoint, _ = tiny_vitpose
    base = ["refine", "--split", "val", "--data-root", str(synth_root), "--out"]
    rest = ["--part-table", str(synth_root / "parts.npz"), "--estimator", "vitpose-hf"]
    rest += ["--checkpoint", str(checkpoint), "--device", "cpu"]
    out = tmp_path / "o"
    assert main([*base, str(out), *rest, "--estimator-option", "nosuch=1"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "refuses the options ['nosuch=1']" in err and "Traceback" not in err
    assert main([*base, str(out), *rest, "--estimator-option", "novalue", "--dry-run"]) == 2
    assert "is not KEY=VALUE" in capsys.readouterr().err
    assert main([*base, str(out), *rest, "--estimator", "no-such-model", "--dry-run"]) == 2
    assert "vitpose-hf" in capsys.readouterr().err  # the registry's names are listed
    assert main([*base, str(out), *rest, "--estimator-option", "decoding=transformers"]) == 0
    record = json.loads((out / "val" / "run.json").read_text())
    assert record["settings"]["estimator_options"] == ["decoding=transformers"]
    assert record["provenance"]["estimator"]["options"] == {"decoding": "transformers"}
    assert record["provenance"]["estimator"]["decoding"] == "transformers"
    # FDH's pixel frame unless asked otherwise (the vote's floor rule and refine-spec's COCO
    # results: pixel i covers [i, i + 1)); an option keeps ViTPose's own frame
    assert record["provenance"]["estimator"]["frame"] == "half-pixel"
    out2 = tmp_path / "o2"
    assert main([*base, str(out2), *rest, "--estimator-option", "frame=official"]) == 0
    record = json.loads((out2 / "val" / "run.json").read_text())
    assert record["provenance"]["estimator"]["frame"] == "official"
