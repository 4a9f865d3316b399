"""S-expressions, FIM split / trim / recompose, and the structural validator (no Java needed)."""

import pytest

from ludii_games import GOOD, LINE_FOUR, MARCH, NO_PLAYERS, UNBALANCED, WITH_DEFINE, WITH_OPTION
from progrl.ludii import fim, library, sexpr
from progrl.ludii.validator import LudemeNames, validate


# ----------------------------------------------------------------------------- s-expressions


def test_parse_structure_and_heads():
    [game] = sexpr.forms(MARCH)
    assert game.head == "game" and game.start == 0 and game.end == len(MARCH)
    heads = [n.head for n in game.forms() if n.head]
    assert heads[:3] == ["game", "players", "player"]
    assert [n.head for n in game.find("rules")] == ["rules"]
    # a named argument and the form after it: "if:(is Empty (to))"
    assert any(a.text == "if:" for a in sexpr.atoms(game))


@pytest.mark.parametrize("text, message", [
    ('(game "x" (players 2)', "'(' at character 0 is never closed"),
    ('(game "x" (players 2)))', "unexpected ')' at character 22"),
    ('(game {"x")}', "'{' at character 6 closed by ')' at character 10"),
    ('(game "x (players 2))', "unterminated string starting at character 6"),
])
def test_parse_errors_name_the_position(text, message):
    with pytest.raises(sexpr.SexprError, match=message.replace("(", r"\(").replace(")", r"\)").replace("{", r"\{")):
        sexpr.parse(text)
    assert not sexpr.is_well_formed(text)


def test_brackets_inside_strings_and_comments_do_not_count():
    text = '(game "a (b" // a ) comment\n (players 2))'
    assert sexpr.is_well_formed(text)
    assert sexpr.canonical(text) == '(game "a (b" (players 2))'


def test_canonical_form():
    messy = '(game  "X"\n   (players 2)\n (equipment { (board (square 3) ) })\n (rules (play (move Add (to (sites Empty))\n if: (is Empty (to))))))'
    c = sexpr.canonical(messy)
    assert c == '(game "X" (players 2) (equipment {(board (square 3))}) (rules (play (move Add (to (sites Empty)) if:(is Empty (to))))))'
    assert sexpr.canonical(c) == c  # idempotent
    for g in GOOD.values():
        assert sexpr.canonical(g) == g  # the test games are written canonically


def test_remove_metadata():
    body = sexpr.remove_forms(WITH_DEFINE, frozenset({"metadata"}))
    assert "metadata" not in body and "(define" in body and '(game "Long Line"' in body


# ----------------------------------------------------------------------------- FIM


def test_candidate_spans_are_balanced_ludemes_inside_the_game():
    text = sexpr.canonical(sexpr.remove_forms(WITH_DEFINE, frozenset({"metadata"})))
    define_end = sexpr.forms(text)[0].end
    spans = fim.candidate_spans(text, 5, 60)
    assert spans
    for s, e in spans:
        middle = text[s:e]
        assert middle.startswith("(") and sexpr.is_well_formed(middle) and 5 <= len(middle) <= 60
        assert s >= define_end  # never inside the top-level define
        assert not middle.startswith("(game")


def test_make_examples_recompose_and_round_trip():
    for gid, text in GOOD.items():
        examples = fim.make_examples(gid, text, per_game=5, min_chars=5, max_chars=80)
        assert 0 < len(examples) <= 5
        assert examples == fim.make_examples(gid, text, per_game=5, min_chars=5, max_chars=80)  # per-game seed
        for ex in examples:
            assert fim.recompose(ex.prefix, ex.middle, ex.suffix) == text == ex.full_game
            assert ex.prompt == f"### PRE: {ex.prefix} ### SUF: {ex.suffix} ### MID:"
            assert fim.parse_fim_text(ex.text) == (ex.prefix, ex.suffix, ex.middle)
            assert fim.parse_prompt(ex.prompt) == (ex.prefix, ex.suffix)
            # the model's answer, then more text: the paper's trim recovers the middle exactly
            assert fim.bracket_trim(ex.middle + " (equipment {(board))") == ex.middle


@pytest.mark.parametrize("generated, trimmed", [
    ("(players 2)) (equipment {(board (square 3))})", "(players 2)"),
    ("{(piece \"A\" Each) (board (square 3))} junk)", "{(piece \"A\" Each) (board (square 3))}"),
    ("(move Add (to (sites Empty)", "(move Add (to (sites Empty)"),  # never balances: kept whole
    ("Orthogonal) (to", "Orthogonal) (to"),  # first closing bracket goes negative: never zero, kept whole
    ("(a {b) }) c", "(a {b) }"),  # both counts zero only at the '}'
    ('(piece "x)" Each) more', '(piece "x)'),  # like the authors' code, brackets in strings count
])
def test_bracket_trim_is_the_papers(generated, trimmed):
    assert fim.bracket_trim(generated) == trimmed


def test_parse_fim_text_rejects_bad_forms():
    with pytest.raises(ValueError, match="exactly one"):
        fim.parse_fim_text("### PRE: a ### MID: b")
    with pytest.raises(ValueError, match="must come before"):
        fim.parse_fim_text("### PRE: a ### MID: b ### SUF: c")
    # the authors' spacing ("### SUF: " with no space before) parses too
    assert fim.parse_fim_text("### PRE: (game \"x\"### SUF: )### MID: (players 2)") == ('(game "x"', ")", "(players 2)")


def test_windowed_prompt_cuts_at_spaces():
    ex = fim.make_examples("m", MARCH, per_game=1, min_chars=60, max_chars=80)[0]
    p = ex.windowed_prompt(30)
    prefix, suffix = fim.parse_prompt(p)
    assert ex.prefix.endswith(prefix) and ex.suffix.startswith(suffix)
    assert len(prefix) <= 30 and len(suffix) <= 30
    assert ex.windowed_prompt(0) == ex.prompt
    assert fim.window_before("abc def", 100) == "abc def"


def test_same_middle_ignores_layout():
    assert fim.same_middle("(board  (square 3) )", "(board (square 3))")
    assert not fim.same_middle("(board (square 4))", "(board (square 3))")


# ----------------------------------------------------------------------------- library (raw mode)


def test_prepare_raw_keeps_defines_and_skips_options():
    text, reason = library.prepare_raw(WITH_DEFINE)
    assert reason is None and text.startswith('(define "Win4"') and "metadata" not in text and "//" not in text
    assert library.prepare_raw(WITH_OPTION) == (None, "uses options")
    assert library.prepare_raw(UNBALANCED) == (None, "malformed")


def test_split_is_by_game_and_stable():
    ids = [f"game-{i}" for i in range(200)]
    train, held = library.split_games(ids, 0.1)
    assert set(train).isdisjoint(held) and set(train) | set(held) == set(ids)
    assert 5 <= len(held) <= 40
    # a game's side does not depend on the other games
    expected = sorted(set(held) & set(ids[:50]))
    assert expected, "the fixed coin should hold out some of the first 50 games"
    assert library.split_games(ids[:50], 0.1)[1] == expected


def test_duplicates_differing_only_in_name_are_one_game():
    renamed = LINE_FOUR.replace('"Line Four"', '"Other Name"')
    prepared = library.prepare([library.RawGame("a", LINE_FOUR), library.RawGame("b", renamed)], None, 10_000)
    assert list(prepared.games) == ["a"] and prepared.skipped == {"duplicate": 1}


# ----------------------------------------------------------------------------- validator


def test_validator_full_credit_for_valid_games():
    names = LudemeNames.from_lines(["game", "players", "player", "equipment", "board", "square", "hex", "piece", "rules",
                                    "play", "move", "to", "sites", "end", "if", "is", "result", "start", "place",
                                    "forEach", "no", "Add", "Empty", "Each", "Line", "Mover", "Win", "Step", "Forward",
                                    "Bottom", "Top", "Piece", "Moves", "Next", "Loss", "N", "S"])
    for g in GOOD.values():
        v = validate(g)
        assert v.score == 1.0 and v.valid and v.message is None
        assert validate(g, names).score == 1.0


def test_validator_partial_credit_by_hand():
    # no players: loses 0.15 of 0.90 (no name list: the 0.10 name share is left out and the rest rescaled)
    v = validate(NO_PLAYERS)
    assert v.score == pytest.approx(0.75 / 0.90) and not v.valid and "players" in v.message
    # no (end ...): loses 0.10 of 0.90
    assert validate(LINE_FOUR.replace(" (end (if (is Line 4) (result Mover Win)))", "")).score == pytest.approx(0.8 / 0.9)
    # unbalanced: nothing at all
    assert validate(UNBALANCED).score == 0.0
    # two top-level forms: the game-skeleton check fails, the rest still counts
    assert validate(LINE_FOUR + " (extra)").score == pytest.approx(0.8 / 0.9)
    # (players 0) is not a player count
    assert validate(LINE_FOUR.replace("(players 2)", "(players 0)")).score == pytest.approx(0.75 / 0.9)


def test_validator_name_check():
    names = LudemeNames.from_lines(["game", "players", "equipment", "board", "square", "piece", "rules", "play", "move",
                                    "to", "sites", "end", "if", "is", "result", "Add", "Empty", "Each", "Line",
                                    "Mover", "Win"])
    assert validate(LINE_FOUR, names).score == 1.0
    bad = LINE_FOUR.replace("(square 5)", "(sqare 5)")
    v = validate(bad, names)
    assert v.score < 1.0 and "not Ludii ludemes" in v.message
    assert v.checks["names"] == pytest.approx(20 / 21)  # 15 heads + 6 constants, one unknown


def test_a_middle_must_be_one_bracketed_form():
    assert fim.is_ludeme("(players 2)") and fim.is_ludeme(" {(a) (b)} ")
    assert not fim.is_ludeme("") and not fim.is_ludeme("   ")  # the masked ludeme deleted
    assert not fim.is_ludeme("(a) (b)") and not fim.is_ludeme("Orthogonal") and not fim.is_ludeme("(a")
    assert not fim.is_ludeme("()") and not fim.is_ludeme("{}") and not fim.is_ludeme("((to))")  # deletion again
    assert fim.is_ludeme("(to)") and fim.is_ludeme('{"A1" "B2"}') and fim.is_ludeme('("Win4")')  # a define call
    for gid, text in GOOD.items():  # every middle the data offers is one
        assert all(fim.is_ludeme(ex.middle) for ex in fim.make_examples(gid, text, per_game=50, min_chars=3,
                                                                           max_chars=500))
