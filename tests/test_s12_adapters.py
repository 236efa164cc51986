"""Phone adapters, session 12: CSV fields float() reads but no CSV writer means (a byte-order mark, '1_0',
non-ASCII digits, a line split at U+2028), clearer CSV errors."""

import numpy as np
import pytest

from stream.adapters import CsvAdapter
from stream.decode import Rejected


def rejected(payload: bytes, adapter=None) -> Rejected:
    with pytest.raises(Rejected) as info:
        (adapter or CsvAdapter()).decode(payload, "rig")
    return info.value


# -- CSV -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("body", [b"\xef\xbb\xbft,ax,ay,az\n1,0,0,9.8\n2,0,0,9.7\n",
                                  b"\xef\xbb\xbf1,0,0,9.8\r\n2,0,0,9.7\r\n"])
def test_csv_after_a_byte_order_mark_is_read(body):
    # Windows tools and some phone apps write one before the text: the header (or first line) was refused
    (b,) = CsvAdapter().decode(body, "rig")
    np.testing.assert_allclose(b.t, [1.0, 2.0])
    np.testing.assert_allclose(b.acc[:, 2], [9.8, 9.7], rtol=1e-6)
    # one mark only: a second is no header and no number
    assert rejected(b"\xef\xbb\xbf" + body).reason == "bad_csv"


@pytest.mark.parametrize("line, field", [
    ("1,0,0,1_0", "1_0"),  # float() read it as 10
    ("1_000,0,0,9.8", "1_000"),  # and this as 1000 s
    ("1,0,0,9.8,0,0_5,0", "0_5"),  # a gyro field alike
    ("1,0,0,\uff19", "\uff19"),  # float() reads a fullwidth 9 as 9
    ("1,0,\u0663,9.8", "\u0663"),  # and an Arabic-Indic 3 as 3
])
def test_a_csv_field_float_reads_but_is_no_number_is_refused_naming_it(line, field):
    width = len(line.split(","))
    good = ",".join(["0.5"] + ["0"] * (width - 1))
    exc = rejected(f"t,ax,ay,az\n{good}\n{line}\n".encode())
    assert exc.reason == "bad_csv"
    assert exc.detail == f"line 3: {field!r} is not a number"


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "Infinity", "+infinity", "1e999"])
def test_csv_non_finite_numbers_are_non_finite_as_in_decode_imu(value):
    assert rejected(f"1,0,0,{value}".encode()).reason == "non_finite"


def test_csv_numbers_with_spaces_around_and_every_decimal_form_are_read():
    (b,) = CsvAdapter().decode(b" 1 , 0.5 ,\t-0 , +9.8e0\n2., .5, -1E-1, 9\n", "rig")
    np.testing.assert_allclose(b.t, [1.0, 2.0])
    np.testing.assert_allclose(b.acc, [[0.5, 0, 9.8], [0.5, -0.1, 9]], rtol=1e-6)


@pytest.mark.parametrize("separator", ["\x85", "\u2028", "\u2029", "\x0b", "\x1e"])
def test_a_csv_line_is_not_split_at_other_unicode_line_breaks(separator):
    # str.splitlines() splits there too: a garbled line became two rows taken as samples
    exc = rejected(f"1,0,0,9.8{separator}2,0,0,9.8\n".encode())
    assert exc.reason == "bad_csv" and "line 1" in exc.detail


def test_csv_lines_end_at_newline_cr_lf_or_cr_and_are_numbered_so():
    (b,) = CsvAdapter().decode(b"1,0,0,9.8\r\n2,0,0,9.8\r3,0,0,9.8\n4,0,0,9.8", "rig")
    np.testing.assert_allclose(b.t, [1, 2, 3, 4])
    exc = rejected(b"1,0,0,9.8\r\n2,0,0,9.8\r3,0,0,9.8\n4,0,x,9.8\n")
    assert exc.reason == "bad_csv" and "line 4" in exc.detail and "'x'" in exc.detail


def test_a_csv_line_of_the_other_width_says_what_was_expected():
    # it said 'line 3 has 7 fields, expected 4 or 7'
    exc = rejected(b"t,ax,ay,az\n1,0,0,9.8\n2,0,0,9.8,0,0,0\n")
    assert exc.reason == "bad_shape"
    assert exc.detail == "line 3 has 7 fields, line 2 has 4"


def test_csv_time_going_back_names_the_line():
    exc = rejected(b"# rig\n1,0,0,9.8\n2,0,0,9.8\n\n1.5,0,0,9.8\n")
    assert exc.reason == "bad_time"
    assert exc.detail == "t decreases at line 5: 1.5 after 2.0 (line 3)"
