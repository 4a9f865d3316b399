"""Game descriptions written for progrl's tests (not from Ludii's library).

Each is a small, ordinary use of the ludeme language; the broken variants each break one thing.
"""

LINE_FOUR = ('(game "Line Four" (players 2) (equipment {(board (square 5)) (piece "Disc" Each)}) '
             '(rules (play (move Add (to (sites Empty)))) (end (if (is Line 4) (result Mover Win)))))')

HEX_THREE = ('(game "Hex Three" (players 2) (equipment {(board (hex 4)) (piece "Marker" Each)}) '
             '(rules (play (move Add (to (sites Empty)))) (end (if (is Line 3) (result Mover Win)))))')

LAST_MOVE = ('(game "Last Move" (players 2) (equipment {(board (square 3)) (piece "Disc" Each)}) '
             '(rules (play (move Add (to (sites Empty)))) (end (if (no Moves Next) (result Mover Win)))))')

MARCH = ('(game "March" (players {(player N) (player S)}) (equipment {(board (square 4)) '
         '(piece "Pawn" Each (move Step Forward (to if:(is Empty (to)))))}) '
         '(rules (start {(place "Pawn1" (sites Bottom)) (place "Pawn2" (sites Top))}) '
         '(play (forEach Piece)) (end (if (no Moves Next) (result Next Loss)))))')

# written as a user would: comments, layout, a define and metadata
WITH_DEFINE = '''// a game of my own
(define "Win4" (if (is Line 4) (result Mover Win)))

(game "Long Line"
    (players 2)
    (equipment {
        (board (square 6))
        (piece "Disc" Each)
    })
    (rules
        (play (move Add (to (sites Empty))))
        (end ("Win4"))
    )
)

(metadata (info {(description "Four in a row on a 6x6 board.")}))
'''

WITH_OPTION = '''(game "Sized Line" (players 2)
    (equipment {(board (square <Size:n>)) (piece "Disc" Each)})
    (rules (play (move Add (to (sites Empty)))) (end (if (is Line 3) (result Mover Win)))))
(option "Size" <Size> args:{<n>} {(item "4" <4> "four") (item "5" <5> "five")})
'''

GOOD = {"line-four": LINE_FOUR, "hex-three": HEX_THREE, "last-move": LAST_MOVE, "march": MARCH}

# broken variants, each with the engine's expected verdict
UNKNOWN_LUDEME = LINE_FOUR.replace("(square 5)", "(sqare 5)")  # not_compiled
UNBALANCED = LINE_FOUR[:-1]  # malformed: never reaches the engine
NO_PLAYERS = LINE_FOUR.replace("(players 2) ", "")  # not_compiled (players is required)
ENDS_AT_ONCE = LINE_FOUR.replace("(if (is Line 4) (result Mover Win))", "(if (= 1 1) (result Mover Win))")  # not_playable
HUGE_BOARD = LINE_FOUR.replace("(square 5)", "(square 400)")  # compiling alone outlasts any budget: timeout
