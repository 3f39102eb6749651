import json

import pytest

from embeddings.cli import main


def test_demo_data_then_evaluate_json(tmp_path, capsys):
    data = tmp_path / "week"
    assert main(["demo-data", "--users", "150", "--listings", "200", "--seed", "1", "--out", str(data)]) == 0
    assert {p.name for p in data.iterdir()} == {"listings.parquet", "events.parquet", "labels.parquet"}
    assert main(["check-data", "--data", str(data)]) == 0
    out = tmp_path / "m.json"
    assert main(["evaluate", "--model", "lightfm", "--data", str(data), "--epochs", "3", "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert {"hr@10", "ndcg@10", "n_cases", "fit_seconds"} <= set(metrics)
    assert "hr@10" in capsys.readouterr().out


def test_evaluate_user_item_text_with_drop_last(tmp_path, capsys):
    path = tmp_path / "ml.txt"
    path.write_text("".join(f"1 {i}\n" for i in (1, 2, 3)) + "".join(f"2 {i}\n" for i in (2, 3, 4, 5)))
    out = tmp_path / "m.json"
    assert main(["evaluate", "--model", "popular", "--data", str(path), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["n_cases"] == 2
    assert main(["evaluate", "--model", "popular", "--data", str(path), "--drop-last", "1", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["n_cases"] == 1  # user 1 keeps two items: too short to split
    assert "last 1 item(s) dropped first: 1 users" in capsys.readouterr().err


def test_train_then_evaluate_checkpoint(tmp_path):
    data = tmp_path / "week"
    main(["demo-data", "--users", "150", "--listings", "200", "--seed", "2", "--out", str(data)])
    model_dir = tmp_path / "sasrec"
    args = ["--data", str(data), "--epochs", "2", "--max-len", "20", "--dim", "16", "--item-encoder", "hybrid"]
    assert main(["train", "--out", str(model_dir), *args]) == 0
    assert {"model.pt", "best.pt", "last.pt", "metrics.json"} <= {p.name for p in model_dir.iterdir()}
    out = tmp_path / "eval.json"
    assert (
        main(["evaluate", "--model", "sasrec", "--checkpoint", str(model_dir / "model.pt"), *args, "--json", str(out)])
        == 0
    )
    trained = json.loads((model_dir / "metrics.json").read_text())["test"]
    assert json.loads(out.read_text())["hr@10"] == trained["hr@10"]


def test_impossible_settings_end_in_one_line_and_exit_2(tmp_path, capsys):
    assert main(["demo-data", "--users", "0", "--out", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "at least 1 user" in err and "Traceback" not in err
    assert not (tmp_path / "w").exists()


def test_preset_sets_defaults_and_flags_given_beside_it_win():
    from embeddings.cli import _from_args, build_parser
    from embeddings.models.sasrec import SASRecConfig
    from embeddings.training.config import PRESETS, TrainConfig

    model, train = PRESETS["ml1m"]
    argv = ["train", "--out", "x", "--data", "y", "--preset", "ml1m"]
    args = build_parser("ml1m").parse_args(argv)
    assert all(getattr(_from_args(SASRecConfig, args), k) == v for k, v in model.items())
    assert all(getattr(_from_args(TrainConfig, args), k) == v for k, v in train.items())
    args = build_parser("ml1m").parse_args([*argv, "--max-len", "30"])
    assert _from_args(SASRecConfig, args).max_len == 30
    plain = build_parser().parse_args(argv[:5])
    assert _from_args(SASRecConfig, plain) == SASRecConfig() and _from_args(TrainConfig, plain) == TrainConfig()


def test_every_command_prints_its_help(capsys):
    """Help text comes partly from the config classes' field comments: each command's --help renders."""
    from embeddings.cli import build_parser

    commands = build_parser(None)._subparsers._group_actions[0].choices
    for name in commands:
        with pytest.raises(SystemExit) as ended:
            main([name, "--help"])
        assert ended.value.code == 0, name
        assert "usage:" in capsys.readouterr().out
    assert {"train", "evaluate", "embed", "run"} <= set(commands)


def test_the_old_profile_flag_and_setting_still_choose_the_target_with_a_warning(capsys, tmp_path):
    """The deployment is the target (--target, [feature_store] target); --profile and profile = still work for one
    release, with a deprecation message ("profile" now means the user vector only)."""
    from embeddings import pipeline as pl
    from embeddings.cli import build_parser

    args = build_parser().parse_args(["lookup", "--user", "U000001", "--profile", "redis"])
    assert args.target == "redis" and "--profile is deprecated; use --target redis" in capsys.readouterr().err
    assert build_parser().parse_args(["lookup", "--user", "U000001", "--target", "spark"]).target == "spark"
    raw = {"job": {"out": "run"}, "data": {"path": "week"}, "feature_store": {"profile": "redis-cluster"}}
    with pytest.warns(DeprecationWarning, match="call it target"):
        cfg = pl.JobConfig.from_dict(raw, base=tmp_path)
    assert cfg.feature_store.target == "redis-cluster" and cfg.feature_store.open().target == "redis-cluster"
