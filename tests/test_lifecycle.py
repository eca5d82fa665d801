import itertools

import pytest

from numex.lifecycle import ALLOWED_MOVES, STAGES, StageMoveRefused, check_move, next_stage

EXPECTED = {
    ("experiment", "parallel"),
    ("parallel", "operational"),
    ("experiment", "rejected"),
    ("parallel", "rejected"),
    ("operational", "retired"),
    ("retired", "operational"),
}


@pytest.mark.parametrize("move", list(itertools.product(STAGES, STAGES)))
def test_every_ordered_pair_of_stages_is_allowed_only_if_in_the_table(move):
    from_stage, to_stage = move
    if move in EXPECTED:
        assert check_move(from_stage, to_stage) == ALLOWED_MOVES[move]
    else:
        with pytest.raises(StageMoveRefused) as refused:
            check_move(from_stage, to_stage)
        assert repr(from_stage) in str(refused.value)
        assert repr(to_stage) in str(refused.value)


def test_table_is_exactly_the_designed_moves():
    assert set(ALLOWED_MOVES) == EXPECTED


def test_unknown_stage_is_named_with_the_valid_ones():
    with pytest.raises(StageMoveRefused, match="unknown stage 'production'.*experiment, parallel"):
        check_move("parallel", "production")


def test_refusal_lists_where_the_candidate_may_go():
    with pytest.raises(StageMoveRefused, match="may move to: parallel, rejected"):
        check_move("experiment", "operational")
    with pytest.raises(StageMoveRefused, match="final stage"):
        check_move("rejected", "parallel")


def test_next_stage_of_a_promotion():
    assert next_stage("experiment") == "parallel"
    assert next_stage("parallel") == "operational"
    assert next_stage("operational") is None
