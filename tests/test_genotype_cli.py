"""python -m ndarts.genotype list / info / draw, and the size counts behind info."""
import json
import os
import subprocess
import sys

import pytest
import torch.nn as nn

from ndarts.genotype import __main__ as cli
from ndarts.genotype import zoo
from ndarts.genotype.stats import count_madds, network_stats


ENV1 = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_info_json_subprocess_gives_published_size():
    p = subprocess.run([sys.executable, "-m", "ndarts.genotype", "info", "DARTS_V2", "--json"],
                       capture_output=True, text=True, env=ENV1, timeout=300)
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)  # exactly one JSON object, nothing else on stdout
    assert 3.2 <= info["params_m"] <= 3.45  # DARTS: 3.3 M
    assert 480 <= info["madds_m"] <= 580  # DARTS_V2 is usually quoted at ~528 M multiply-adds
    assert info["params_with_auxiliary_m"] > info["params_m"]
    assert (info["skip_normal"], info["skip_reduce"]) == zoo()["DARTS_V2"].skip_counts()


def test_info_text_and_list(capsys):
    cli.main(["list"])
    out = capsys.readouterr().out
    assert all(name in out for name in zoo())
    cli.main(["info", "NoisyDARTS-a", "--init-channels", "8", "--layers", "5"])
    out = capsys.readouterr().out
    assert "node 3" in out and "M params" in out and "multiply-adds" in out


def test_counts_against_hand_computation():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 5, stride=2, padding=2, groups=4),
                        nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    expected = 8 * 8 * 8 * 3 * 3 * 3 + 8 * 4 * 4 * 2 * 5 * 5 + 128 * 10
    assert count_madds(net, (1, 3, 8, 8)) == expected
    # params grow with the channels, madds with the input size
    g = zoo()["NoisyDARTS-b"]
    small, wide = network_stats(g, C=8, layers=5), network_stats(g, C=16, layers=5)
    assert 3.0 < wide["params_m"] / small["params_m"] < 4.2
    big_input = network_stats(g, C=8, layers=5, image_size=64)
    assert big_input["params"] == small["params"]
    assert 3.5 < big_input["madds"] / small["madds"] < 4.1


def test_draw_writes_png_and_svg(tmp_path, capsys):
    cli.main(["draw", "DARTS_V1", "--out", str(tmp_path / "fig" / "v1")])
    for which in ("normal", "reduce"):
        png, svg = tmp_path / "fig" / f"v1-{which}.png", tmp_path / "fig" / f"v1-{which}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        text = svg.read_text()
        assert "<svg" in text and "skip_connect" in text


@pytest.mark.parametrize("spec, fragment", [
    ("DARTS_V3", "neither a zoo genotype"),
    ("{not json", "not valid JSON"),
    ('{"normal": [["sep_conv_3x3", 0], ["sep_conv_3x3", 1]], "normal_concat": [2], '
     '"reduce": [["max_pool_3x3", 0], ["max_pool_3x3", 1], ["max_pool_3x3", 0], ["max_pool_3x3", 2]], '
     '"reduce_concat": [2, 3]}', "same number of nodes"),
    ('{"normal": [["sep_conv_3x3", 0], ["sep_conv_3x3", 5]], "normal_concat": [2], '
     '"reduce": [["max_pool_3x3", 0], ["max_pool_3x3", 1]], "reduce_concat": [2]}', "valid inputs"),
])
def test_genotype_errors_exit_2_one_line(capsys, spec, fragment):
    with pytest.raises(SystemExit) as exc:
        cli.main(["info", spec])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and fragment in err, err


def test_the_package_lists_its_commands():
    import importlib
    import importlib.util
    import subprocess
    import sys

    from ndarts.__main__ import COMMANDS

    r = subprocess.run([sys.executable, "-m", "ndarts"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for name in COMMANDS:
        assert f"  {name} " in r.stdout
        module = importlib.import_module(f"ndarts.{name}")  # each listed command runs with python -m
        assert hasattr(module, "main") or importlib.util.find_spec(f"ndarts.{name}.__main__") is not None


@pytest.mark.parametrize("how", ["trailing separator", "existing directory"])
def test_draw_into_a_directory(tmp_path, capsys, how, fresh_seed):
    """--out DIR/ or an existing DIR: the figures go inside it, named after the genotype (was
    DIR-normal.png beside it)."""
    name = sorted(zoo())[fresh_seed % len(zoo())]
    out = tmp_path / "figs"
    if how == "existing directory":
        out.mkdir()
    cli.main(["draw", name, "--out", str(out) + ("/" if how == "trailing separator" else "")])
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(f"{name}-{which}.{fmt}" for which in ("normal", "reduce") for fmt in ("png", "svg"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figs"]  # nothing beside the directory
    assert capsys.readouterr().out.split() == [str(out / n) for n in
                                               (f"{name}-normal.png", f"{name}-normal.svg",
                                                f"{name}-reduce.png", f"{name}-reduce.svg")]
    g = zoo()[name].to_json()
    cli.main(["draw", g, "--out", str(out)])
    assert (out / "cell-normal.png").is_file() and (out / "cell-reduce.svg").is_file()


@pytest.mark.parametrize("flag", ["--init-channels", "--layers", "--num-classes", "--image-size"])
def test_info_names_a_bad_size_flag(capsys, flag, fresh_seed):
    value = -(fresh_seed % 5)
    with pytest.raises(SystemExit) as exc:
        cli.main(["info", "DARTS_V2", flag, str(value)])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {flag} must be >= 1, got {value}"


def test_help_lists_every_command():
    text = cli.build_parser().format_help()
    assert all(name in text for name in ("list", "info", "draw", "predict"))
