from __future__ import annotations

from pathlib import Path

from pibake import boards
from pibake.errors import UsageError
from tests.conftest import run_cli


def test_help_explains_every_subcommand() -> None:
    res = run_cli(["--help"])
    assert res.code == 0
    for word in ("image", "emulate", "demo"):
        assert word in res.out
    res = run_cli(["emulate", "start", "--help"])
    assert res.code == 0
    assert "--profile" in res.out and "--persist" in res.out


def test_missing_image_is_a_clear_error_not_a_traceback(tmp_path: Path, isolated_cache: Path) -> None:
    res = run_cli(["emulate", "start", str(tmp_path / "nope.img"), "--name", "t"])
    assert res.code == UsageError.exit_code
    assert "pibake: error: no image at" in res.err
    assert "make image" in res.err
    assert "Traceback" not in res.err


def test_status_and_stop_of_a_guest_that_never_ran(isolated_cache: Path) -> None:
    res = run_cli(["emulate", "status", "--name", "ghost"])
    assert res.code == 3
    assert "ghost: not running" in res.out
    res = run_cli(["emulate", "stop", "--name", "ghost"])
    assert res.code == 0


def test_bad_guest_names_are_refused(isolated_cache: Path) -> None:
    res = run_cli(["emulate", "status", "--name", "../etc"])
    assert res.code == UsageError.exit_code
    assert "invalid guest name" in res.err


def test_emulate_refuses_an_unknown_board_while_parsing_with_the_known_ones(
    tmp_path: Path, isolated_cache: Path
) -> None:
    for action in ("start", "run"):
        res = run_cli(["emulate", action, str(tmp_path / "nope.img"), "--board", "pi9"])
        assert res.code == UsageError.exit_code
        # argparse's own refusal, as for `image build --board`: before the image is even looked for.
        assert "argument --board: invalid choice: 'pi9'" in res.err and "no image at" not in res.err
        assert all(f"'{name}'" in res.err for name in boards.names())
