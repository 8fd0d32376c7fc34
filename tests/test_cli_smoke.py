"""The command line starts, lists its commands and reports user errors cleanly."""

from mergezoo.cli import main


def test_help_lists_commands(capsys):
    try:
        main(["--help"])
    except SystemExit as exit_:
        assert exit_.code == 0
    out = capsys.readouterr().out
    for command in ("merge", "methods", "demo"):
        assert command in out


def test_unknown_method_is_a_clean_error(tmp_path, capsys):
    status = main(["merge", "--method", "nope", str(tmp_path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert status == 2
    assert "unknown merge method 'nope'" in err and "ties" in err
    assert not (tmp_path / "o").exists()
