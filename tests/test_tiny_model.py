"""The tiny base's recency heads (vlm.tiny.add_recency_heads): the request after an 800-token table is visible."""
import pytest

torch = pytest.importorskip("torch")


def test_recency_heads_look_at_the_end_of_a_long_prompt(tmp_path):
    from transformers import LlavaOnevisionForConditionalGeneration

    from vlm.tiny import build_tiny_model

    base, _ = build_tiny_model(tmp_path / "tiny")
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(base, attn_implementation="eager").eval()
    ids = torch.randint(10, 500, (1, 800), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        attentions = model(input_ids=ids, output_attentions=True).attentions  # layers x (1, heads, q, k)
    for layer in attentions:
        last = layer[0, :, -1]  # what the last position attends to, per head
        recent_share = last[:, -100:].sum(-1)  # uniform attention would give 100/800 = 0.125
        assert recent_share[0] > 0.5, recent_share
        assert recent_share[1:].max() < 0.4, recent_share  # the other heads stay random
