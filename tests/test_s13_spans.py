"""Labels given as start-end spans: two spans of one label that touch label the windows across their
boundary; a gap between them, or another label inside, still does not."""

from stream.labels import LabelBook


def book(*spans):
    b = LabelBook()
    for label, start, end in spans:
        b.add("d", label, start, end)
    return b


def test_touching_spans_of_one_label_label_a_window_across_their_boundary():
    b = book(("squat", 0.0, 10.0), ("squat", 10.0, 20.0))
    assert b.window_label("d", 9.0, 11.0) == "squat"
    assert b.window_label("d", 1.0, 3.0) == "squat"


def test_overlapping_spans_of_one_label_label_it_too():
    assert book(("curl", 0.0, 10.0), ("curl", 8.0, 20.0)).window_label("d", 9.0, 11.0) == "curl"


def test_a_gap_between_spans_of_one_label_still_labels_nothing_across_it():
    b = book(("squat", 0.0, 10.0), ("squat", 10.5, 20.0))
    assert b.window_label("d", 9.0, 11.0) is None
    assert b.window_label("d", 11.0, 13.0) == "squat"


def test_spans_of_two_labels_or_another_inside_label_nothing_across():
    assert book(("squat", 0.0, 10.0), ("curl", 10.0, 20.0)).window_label("d", 9.0, 11.0) is None
    b = book(("squat", 0.0, 10.0), ("rest", 9.8, 10.2), ("squat", 10.0, 20.0))
    assert b.window_label("d", 9.0, 11.0) is None
