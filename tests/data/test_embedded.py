"""data/embedded.py: the three splits of the embedded default are disjoint, fixed, and cover the data."""

import numpy as np
import pytest

from showo_jax.data import embedded
from showo_jax.data import images


def test_splits_are_disjoint_and_cover_everything():
  digits, _ = embedded.load_mnist()
  n = len(digits)
  parts = {s: embedded.split_indices(n, s) for s in embedded.SPLITS}
  assert {s: len(v) for s, v in parts.items()} == {"train": 4000, "validation": 500, "test": 500}
  assert np.array_equal(np.sort(np.concatenate(list(parts.values()))), np.arange(n))
  assert list(parts["test"][:3]) == [0, 10, 20] and list(parts["validation"][:3]) == [5, 15, 25]
  docs = {s: embedded.load_text(s) for s in embedded.SPLITS}
  # 3 test and 1 validation document repeat training ones in the corpus: they are left out.
  assert {s: len(v) for s, v in docs.items()} == {"train": 240, "validation": 29, "test": 27}
  assert not set(docs["validation"]) & set(docs["train"]) and not set(docs["test"]) & set(docs["train"])
  with pytest.raises(ValueError, match="unknown split 'val'; use one of train, validation, test"):
    embedded.split_indices(n, "val")


def test_validation_collection_holds_its_digits():
  digits, labels = embedded.load_mnist()
  idx = embedded.split_indices(len(digits), "validation")
  collection = images.ImageCollection("embedded:validation", 32)
  assert len(collection) == 500
  image, fields = collection.load(3)
  np.testing.assert_array_equal(image, digits[idx[3]])
  assert fields["label"] == int(labels[idx[3]]) and fields["answer"] == embedded.DIGITS[int(labels[idx[3]])]


def test_sideways_views_turn_the_digits_clockwise_and_ask_the_new_question():
  np.testing.assert_array_equal(embedded.turn_sideways(np.arange(6).reshape(1, 2, 3, 1))[0, ..., 0],
                                [[3, 0], [4, 1], [5, 2]])  # 90° clockwise: the left column becomes the top row
  digits, labels = embedded.load_mnist()
  idx = embedded.split_indices(len(digits), "test")
  word = embedded.DIGITS[int(labels[idx[3]])]
  image, fields = images.ImageCollection("embedded:test:sideways", 32).load(3)
  np.testing.assert_array_equal(image, np.rot90(digits[idx[3]], k=-1))
  assert fields == {"caption": f"a handwritten digit {word} on its side", "label": int(labels[idx[3]]),
                    "question": "Is this digit on its side?", "answer": "yes"}
  image, fields = images.ImageCollection("embedded:test:upright", 32).load(3)
  np.testing.assert_array_equal(image, digits[idx[3]])
  assert fields["answer"] == "no" and fields["caption"] == f"a handwritten digit {word}"
  assert len(images.ImageCollection("embedded:test*2:sideways", 32)) == 1000
  with pytest.raises(ValueError, match="unknown view 'flipped'"):
    images.ImageCollection("embedded:test:flipped", 32)
