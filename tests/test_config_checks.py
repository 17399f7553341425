"""Range checks of the search's and the training's settings: a value out of range is one clear line naming
the flag (before anything is built or written), never a traceback from torch.optim or a silent misuse; a
network too short for a normal cell is named in the log."""
import json

import pytest

from ndarts import search, train
from ndarts.cell_layout import no_normal_cell_note, reduction_cells
from ndarts.errors import NdartsError
from ndarts.eval_model import build_network
from ndarts.genotype import load_genotype
from ndarts.search_model import SearchNetwork
from ndarts.searcher import SearchConfig, Searcher
from ndarts.trainer import TrainConfig, Trainer

BOTH = (SearchConfig, TrainConfig)

BAD = [  # (setting, value, what the message says), for both configs
    ("momentum", -0.1, "--momentum must be in [0, 1), got -0.1"),
    ("momentum", 1.0, "--momentum must be in [0, 1)"),
    ("weight_decay", -3e-4, "--weight-decay must be >= 0"),
    ("weight_decay", float("inf"), "--weight-decay must be >= 0, got inf"),
    ("grad_clip", -5.0, "--grad-clip must be > 0, got -5.0"),
    ("grad_clip", 0.0, "--grad-clip must be > 0"),
    ("grad_clip", float("nan"), "--grad-clip must be > 0, got nan"),
    ("learning_rate", 0.0, "--learning-rate must be > 0"),
    ("learning_rate_min", -0.001, "--learning-rate-min must be in [0, --learning-rate]"),
    ("learning_rate_min", 1.0, "--learning-rate-min must be in [0, --learning-rate]"),
    ("workers", -1, "--workers must be >= 0, got -1"),
    ("report_freq", -2, "--report-freq must be >= 0"),
    ("max_steps", 0, "--max-steps must be >= 1, got 0"),
    ("image_size", 0, "--image-size must be >= 1"),
    ("layers", 0, "--layers must be >= 1"),
]
SEARCH_ONLY = [
    ("arch_weight_decay", -1e-3, "--arch-weight-decay must be >= 0"),
    ("arch_learning_rate", float("inf"), "--arch-learning-rate must be > 0, got inf"),
    ("hessian_every", -1, "--hessian-every must be >= 0, got -1"),
    ("train_portion", 1.0, "--train-portion must be in (0, 1), got 1.0"),
    ("train_portion", 0.0, "--train-portion must be in (0, 1)"),
]
TRAIN_ONLY = [
    ("lr_gamma", 0.0, "--lr-gamma must be > 0"),
    ("auxiliary_weight", -0.4, "--auxiliary-weight must be >= 0"),
    ("cutout", -1, "--cutout must be >= 0"),
    ("drop_path_prob", 1.0, "--drop-path-prob must be in [0, 1), got 1.0"),
    ("label_smoothing", float("nan"), "--label-smoothing must be in [0, 1), got nan"),
]


@pytest.mark.parametrize("config", BOTH, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name,value,message", BAD)
def test_a_setting_out_of_range_is_named(config, name, value, message):
    with pytest.raises(NdartsError) as exc:
        config(**{name: value}).validate()
    assert message in str(exc.value)


@pytest.mark.parametrize("config,name,value,message",
                         [(SearchConfig, *b) for b in SEARCH_ONLY] + [(TrainConfig, *b) for b in TRAIN_ONLY])
def test_a_run_specific_setting_out_of_range_is_named(config, name, value, message):
    with pytest.raises(NdartsError) as exc:
        config(**{name: value}).validate()
    assert message in str(exc.value)


@pytest.mark.parametrize("config", BOTH, ids=lambda c: c.__name__)
def test_the_edges_of_the_ranges_are_accepted(config):
    config().validate()
    lr = config().learning_rate
    config(momentum=0.0, weight_decay=0.0, learning_rate_min=lr, workers=0, report_freq=0, max_steps=1,
           image_size=1, grad_clip=1e-6).validate()
    config(learning_rate_min=0.0).validate()


def _one_line_error(capsys, main, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert message in err, err


@pytest.mark.parametrize("argv,message", [
    (["--momentum", "-1"], "--momentum must be in [0, 1), got -1.0"),  # was torch.optim's traceback
    (["--arch-weight-decay", "-1"], "--arch-weight-decay must be >= 0"),  # was torch.optim's traceback
    (["--grad-clip", "-5"], "--grad-clip must be > 0"),  # was a search with flipped gradients
    (["--max-steps", "0"], "--max-steps must be >= 1"),  # was epochs of no steps
])
def test_search_cli_refuses_before_making_the_run_directory(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    _one_line_error(capsys, search.main, [*argv, "--out", str(out)], message)
    assert not out.exists()


@pytest.mark.parametrize("argv,message", [
    (["--weight-decay", "-0.0003"], "--weight-decay must be >= 0"),
    (["--learning-rate-min", "1"], "--learning-rate-min must be in [0, --learning-rate] = [0, 0.025], got 1.0"),
])
def test_train_cli_refuses_before_making_the_run_directory(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    _one_line_error(capsys, train.main, [*argv, "--out", str(out)], message)
    assert not out.exists()


@pytest.mark.parametrize("cli,options", [
    (search, {"--learning-rate": "0.05", "--learning-rate-min": "0.001", "--momentum": "0.9",
              "--weight-decay": "0.0003", "--grad-clip": "5.0", "--arch-learning-rate": "0.0003",
              "--arch-weight-decay": "0.001", "--arch-activation": "softmax", "--order": "first",
              "--seed": "2", "--noise-mixture": "additive"}),
    (train, {"--learning-rate-min": "0.0", "--momentum": "0.9", "--grad-clip": "5.0", "--seed": "0"}),
])
def test_help_names_the_defaults_of_options_without_help_text(cli, options):
    """argparse adds "(default: X)" to a non-empty help only: these options showed no default."""
    import re

    text = " ".join(cli.build_parser().format_help().split())  # lines re-wrapped as one
    for option, default in options.items():
        entry = re.search(rf"\s{option} \S+ (.*?)(?= --[a-z]|$)", text)
        assert entry and f"default: {default}" in entry.group(1), (option, entry and entry.group(1))


def test_a_resumed_run_is_checked_with_the_new_flags(tmp_path, capsys):
    """`--out DIR --resume --momentum -1`: the override is checked too, and the run is left as it was."""
    out = tmp_path / "run"
    out.mkdir()
    saved = SearchConfig(out=str(out)).to_dict()
    (out / "config.json").write_text(json.dumps(saved))
    _one_line_error(capsys, search.main, ["--out", str(out), "--resume", "--momentum", "-1"], "--momentum")
    assert json.loads((out / "config.json").read_text()) == saved


@pytest.mark.parametrize("layers", range(1, 10))
def test_reduction_cells_are_the_networks(layers):
    """reduction_cells is the layout both networks build (cells layers//3 and 2·layers//3)."""
    searched = SearchNetwork(C=2, num_classes=3, layers=layers, steps=1, multiplier=1, in_channels=1)
    assert {i for i, c in enumerate(searched.cells) if c.reduction} == reduction_cells(layers)
    evaluated = build_network("cifar", load_genotype("DARTS_V2"), 2, 3, layers, auxiliary=False)
    assert {i for i, c in enumerate(evaluated.cells) if c.reduction} == reduction_cells(layers)
    has_normal = len(reduction_cells(layers)) < layers
    assert has_normal == (layers >= 3)
    assert (no_normal_cell_note(layers, "x") is None) == has_normal


def test_a_network_without_a_normal_cell_is_noted_in_the_log(tmp_path):
    cfg = SearchConfig(dataset="digits", layers=2, steps=1, init_channels=2, batch_size=4, max_steps=1, epochs=1,
                       report_freq=0, out=str(tmp_path / "s"))
    Searcher(cfg).run_search()
    log = (tmp_path / "s" / "log.txt").read_text()
    assert "--layers 2 makes every cell a reduction cell" in log and "α gets no gradient" in log
    tcfg = TrainConfig(dataset="digits", layers=1, init_channels=4, batch_size=8, max_steps=1, epochs=1,
                       report_freq=0, auxiliary=False, out=str(tmp_path / "t"))
    tcfg.resolve_genotype()
    Trainer(tcfg).fit()
    log = (tmp_path / "t" / "log.txt").read_text()
    assert "--layers 1 makes every cell a reduction cell" in log and "normal cell is not used" in log
    ok = SearchConfig(dataset="digits", layers=3, steps=1, init_channels=2, batch_size=4, max_steps=1, epochs=1,
                      report_freq=0, out=str(tmp_path / "s3"))
    Searcher(ok).run_search()
    assert "reduction cell" not in (tmp_path / "s3" / "log.txt").read_text()


@pytest.mark.parametrize("cli", [search, train], ids=["search", "train"])
def test_a_resume_may_not_shorten_a_run_below_its_done_epochs(tmp_path, capsys, cli):
    """Was: the search wrote its final genotype and a config.json of fewer epochs than it had done."""
    out = tmp_path / "run"
    cli.main(["--layers", "3", "--init-channels", "4", "--batch-size", "16", "--max-steps", "1", "--epochs", "2",
              "--out", str(out)])
    config, metrics = (out / "config.json").read_text(), (out / "metrics.jsonl").read_text()
    _one_line_error(capsys, cli.main, ["--out", str(out), "--resume", "--epochs", "1"],
                    "has done 2 epochs, more than --epochs 1: a resume may lengthen a run, not shorten it")
    assert (out / "config.json").read_text() == config and (out / "metrics.jsonl").read_text() == metrics
    cli.main(["--out", str(out), "--resume"])  # as many epochs as done: the run is finished, that is fine
