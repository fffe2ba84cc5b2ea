"""vlm.tiny_pretrain: the task-agnostic recall sequences the tiny base is pre-trained on (nothing of the CAD task)."""
from __future__ import annotations

import random

from vlm.tiny_pretrain import _recall_sequence, _repeat_sequence, batch


def test_labels_score_only_the_tokens_that_can_be_recalled():
    rng, vocab = random.Random(3), range(300, 2000)
    for make in (_repeat_sequence, _recall_sequence):
        for _ in range(200):
            tokens, labels = make(rng, vocab, 96)
            assert len(tokens) == len(labels) <= 96
            scored = [j for j, label in enumerate(labels) if label != -100]
            assert scored and all(labels[j] == tokens[j] for j in scored)


def test_a_repeat_scores_the_segment_again_after_its_first_token():
    tokens, labels = _repeat_sequence(random.Random(5), range(300, 2000), 96)
    scored = [j for j, label in enumerate(labels) if label != -100]
    n = len(scored) + 1  # the segment's length
    assert tokens[-n:] == tokens[:n] and scored == list(range(len(tokens) - n + 1, len(tokens)))


def test_recall_asks_keys_it_was_shown_with_their_values():
    tokens, labels = _recall_sequence(random.Random(0), range(300, 2000), 96)
    shown = dict(zip(tokens[0::2], tokens[1::2]))
    asked = [(tokens[j - 1], labels[j]) for j in range(len(labels)) if labels[j] != -100]
    assert asked and all(shown[k] == v for k, v in asked)


def test_batches_pad_without_scoring_the_padding():
    ids, labels, mask = batch(random.Random(1), range(300, 2000), 8, 96)
    assert ids.shape == labels.shape == mask.shape and ids.shape[0] == 8
    assert ((labels != -100) <= (mask == 1)).all()
