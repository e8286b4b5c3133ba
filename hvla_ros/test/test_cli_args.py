"""Seed lists as every seeded command takes them (eval-skills, eval-refiner, bench_graph)."""

from __future__ import annotations

import argparse

import pytest

from hvla_ros.cli import main as hvla
from hvla_ros.cli_args import seed_list


def test_seed_list_reads_ranges_and_lists_in_order():
    assert seed_list("0-3") == [0, 1, 2, 3]
    assert seed_list("7") == [7]
    assert seed_list("0-2, 10,4") == [0, 1, 2, 10, 4]


@pytest.mark.parametrize("bad", ["a-3", "5-2", "1,,2", "-3", ""])
def test_seed_list_names_the_bad_value(bad):
    with pytest.raises(argparse.ArgumentTypeError, match=repr(bad)):
        seed_list(bad)


def test_a_command_rejects_a_descending_range_before_running(capsys):
    with pytest.raises(SystemExit) as exc:
        hvla(["eval-skills", "--seeds", "9-3"])
    assert exc.value.code == 2
    assert "'9-3'" in capsys.readouterr().err
