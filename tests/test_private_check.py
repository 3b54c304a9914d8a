"""conceptlens._check: validators name the argument, the rule and the value; formatters show '–' for gaps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conceptlens._check import MISSING, as_float, check_float, check_int, fmt, fmt_num, fmt_pct, minus
from conceptlens.errors import ConceptLensError, ParameterError


def test_check_int_accepts_integers_and_names_what_is_wrong() -> None:
    assert check_int("steps", 3, 1) == 3
    assert check_int("steps", np.int64(4), 1) == 4 and type(check_int("steps", np.int64(4), 1)) is int
    with pytest.raises(ParameterError, match=r"steps must be an integer ≥ 1, got 0"):
        check_int("steps", 0, 1)
    with pytest.raises(ParameterError, match=r"steps must be an integer ≤ 5, got 6; fewer please"):
        check_int("steps", 6, 1, maximum=5, hint="fewer please")
    for bad in (True, 2.0, "3", None):
        with pytest.raises(ParameterError, match="steps must be an integer"):
            check_int("steps", bad, 1)
    assert issubclass(ParameterError, ConceptLensError)


def test_check_float_bounds_and_finiteness() -> None:
    assert check_float("lr", 0.1, 0.0, strict_min=True) == 0.1
    with pytest.raises(ParameterError, match=r"lr must be > 0.0, got 0.0"):
        check_float("lr", 0.0, 0.0, strict_min=True)
    with pytest.raises(ParameterError, match="finite"):
        check_float("lr", math.nan)
    with pytest.raises(ParameterError, match="must be a number"):
        check_float("lr", "0.1")
    with pytest.raises(ParameterError, match=r"≤ 1"):
        check_float("p", 1.5, 0.0, maximum=1)


def test_formatters() -> None:
    assert fmt(0.12345) == "0.123" and fmt(0.12345, 2, "sig") == "0.12"
    assert fmt(None) == MISSING and fmt(math.nan) == MISSING and fmt("x", kind="str") == "x"
    assert fmt_pct(0.256) == "26\u00a0%" and fmt_pct(0.256, 1) == "25.6\u00a0%"
    assert fmt(0.7, kind="bool") == "yes" and fmt(0.2, kind="bool") == "no"
    assert fmt_num(-0.5) == "−0.5" and fmt_num(123456.0) == "1.235e+05"
    assert minus("-1 - 2") == "−1 − 2"
    assert math.isnan(as_float("abc")) and as_float("2") == 2.0
