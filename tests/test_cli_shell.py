import json


def test_routine_list_json_is_empty_list_on_a_new_database(runner):
    result = runner.invoke("routine", "list", "--json")
    assert result.exit_code == 0
    assert json.loads(result.output) == []


def test_help_lists_the_command_groups(runner):
    result = runner.invoke("--help")
    for command in ("db", "serve", "routine"):
        assert command in result.output
