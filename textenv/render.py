"""``render_mode="rgb_array"``: the env's text as an image (numpy only, a built-in 3x5 bitmap font).

What SB3's helpers (``make_vec_env``) and video recorders ask for. Every frame of an env has the same size
(``LINES`` lines of ``COLUMNS`` characters); text that does not fit keeps its end (the newest tokens).
Letters are drawn in capitals; a character outside the font is a small checker glyph. The prompt is grey,
the completion dark blue, on white.
"""

from __future__ import annotations

import numpy as np

COLUMNS = 48
LINES = 16
SCALE = 2  # pixels per font pixel
_CELL_W, _CELL_H = 4, 6  # a 3x5 glyph plus one pixel of spacing

_FONT_ROWS = {
    "A": ".#. #.# ### #.# #.#", "B": "##. #.# ##. #.# ##.", "C": ".## #.. #.. #.. .##", "D": "##. #.# #.# #.# ##.",
    "E": "### #.. ##. #.. ###", "F": "### #.. ##. #.. #..", "G": ".## #.. #.# #.# .##", "H": "#.# #.# ### #.# #.#",
    "I": "### .#. .#. .#. ###", "J": "..# ..# ..# #.# .#.", "K": "#.# #.# ##. #.# #.#", "L": "#.. #.. #.. #.. ###",
    "M": "#.# ### ### #.# #.#", "N": "##. #.# #.# #.# #.#", "O": ".#. #.# #.# #.# .#.", "P": "##. #.# ##. #.. #..",
    "Q": ".#. #.# #.# ##. .##", "R": "##. #.# ##. #.# #.#", "S": ".## #.. .#. ..# ##.", "T": "### .#. .#. .#. .#.",
    "U": "#.# #.# #.# #.# ###", "V": "#.# #.# #.# #.# .#.", "W": "#.# #.# ### ### #.#", "X": "#.# #.# .#. #.# #.#",
    "Y": "#.# #.# .#. .#. .#.", "Z": "### ..# .#. #.. ###",
    "0": "### #.# #.# #.# ###", "1": ".#. ##. .#. .#. ###", "2": "##. ..# .#. #.. ###", "3": "##. ..# .#. ..# ##.",
    "4": "#.# #.# ### ..# ..#", "5": "### #.. ##. ..# ##.", "6": ".## #.. ### #.# ###", "7": "### ..# .#. .#. .#.",
    "8": "### #.# ### #.# ###", "9": "### #.# ### ..# ##.",
    ".": "... ... ... ... .#.", ",": "... ... ... .#. #..", "!": ".#. .#. .#. ... .#.", "?": "##. ..# .#. ... .#.",
    ":": "... .#. ... .#. ...", ";": "... .#. ... .#. #..", "'": ".#. .#. ... ... ...", '"': "#.# #.# ... ... ...",
    "-": "... ... ### ... ...", "+": "... .#. ### .#. ...", "=": "... ### ... ### ...", "*": "... #.# .#. #.# ...",
    "/": "..# ..# .#. #.. #..", "(": ".#. #.. #.. #.. .#.", ")": ".#. ..# ..# ..# .#.", "_": "... ... ... ... ###",
    " ": "... ... ... ... ...",
}
_UNKNOWN = "#.# .#. #.# .#. #.#"


def _glyph(rows: str) -> np.ndarray:
    return np.array([[c == "#" for c in row] for row in rows.split()], dtype=bool)  # (5, 3)


_FONT = {ch: _glyph(rows) for ch, rows in _FONT_ROWS.items()}
_UNKNOWN_GLYPH = _glyph(_UNKNOWN)

PROMPT_COLOUR = np.array([110, 110, 110], dtype=np.uint8)
COMPLETION_COLOUR = np.array([0, 0, 160], dtype=np.uint8)
BACKGROUND = 255


def frame_shape() -> tuple[int, int, int]:
    """``(H, W, 3)`` of every frame."""
    return LINES * _CELL_H * SCALE, COLUMNS * _CELL_W * SCALE, 3


def _layout(text: str) -> list[list[tuple[int, str]]]:
    """``text`` (characters tagged with their index) wrapped into lines of at most ``COLUMNS``."""
    lines: list[list[tuple[int, str]]] = [[]]
    for i, ch in enumerate(text):
        if ch == "\n" or len(lines[-1]) == COLUMNS:
            lines.append([])
            if ch == "\n":
                continue
        lines[-1].append((i, "    " if ch == "\t" else ch))
    return lines[-LINES:]


def render_text(prompt: str, completion: str) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 image of ``prompt + completion`` (see the module docstring)."""
    H, W, _ = frame_shape()
    small = np.full((LINES * _CELL_H, COLUMNS * _CELL_W, 3), BACKGROUND, dtype=np.uint8)
    text = prompt + completion
    for row, line in enumerate(_layout(text)):
        for col, (i, ch) in enumerate(line):
            glyph = _FONT.get(ch.upper(), _UNKNOWN_GLYPH)
            y, x = row * _CELL_H, col * _CELL_W
            cell = small[y:y + 5, x:x + 3]
            cell[glyph] = PROMPT_COLOUR if i < len(prompt) else COMPLETION_COLOUR
    return np.repeat(np.repeat(small, SCALE, axis=0), SCALE, axis=1)
