"""Distill's validation slice: spread over the training items, not their tail. A class-
ordered image folder's tail is one class: the student never trained on it and was judged
on it alone (a user's digits CNN, pruned and distilled, stayed at 0.18 agreement)."""
from reactinfer.compression.distill import validation_split


def test_validation_slice_of_a_class_ordered_folder_holds_every_class():
    items = [(c, i) for c in range(10) for i in range(105)]  # class subfolders, in order
    val, train = validation_split(items, 64)
    assert len(val) == 64 and len(train) == len(items) - 64
    assert {c for c, _ in val} == set(range(10))
    assert {c for c, _ in train} == set(range(10))
    assert not set(val) & set(train)


def test_validation_slice_sizes_at_the_edges():
    assert validation_split(list(range(5)), 5) == (list(range(5)), [])
    assert validation_split(list(range(5)), 1) == ([2], [0, 1, 3, 4])
    assert validation_split(list(range(3)), 0) == ([], [0, 1, 2])
