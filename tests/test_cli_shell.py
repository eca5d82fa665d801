import json

from numex.cli import main


def test_routine_list_json_is_empty_list_on_a_new_database(runner):
    result = runner.invoke("routine", "list", "--json")
    assert result.exit_code == 0
    assert json.loads(result.output) == []


def test_help_lists_the_command_groups(runner):
    result = runner.invoke("--help")
    for command in ("db", "serve", "routine"):
        assert command in result.output


def test_commands_on_an_unmigrated_database_say_to_upgrade(runner, tmp_path, monkeypatch):
    monkeypatch.setenv("NUMEX_DATABASE_URL", f"sqlite:///{tmp_path / 'blank.db'}")
    result = runner.cli.invoke(main, ["routine", "list"])
    assert result.exit_code == 1
    assert "run `numex db upgrade` first" in result.output
    assert "Traceback" not in result.output
