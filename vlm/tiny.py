"""Build LLaVA-OneVision models offline: a tiny one for tests, a ~0.5B synthetic one for benchmarks.

Both are real `LlavaOnevisionForConditionalGeneration` folders in Hugging Face layout (config, safetensors
weights, processor with tokenizer, image and video processors, chat template), so every loading and
generation code path is the production one. The weights are random (outputs are gibberish, but deterministic for
a given seed), except that the tiny model's first attention head in each layer leans toward recent tokens
(`add_recency_heads`), as the local heads of every pretrained language model do.

CLI: `python -m vlm.tiny OUT_DIR [--synthetic]` writes `OUT_DIR/base` (+ `OUT_DIR/adapter` for the tiny one).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
IMAGE_SIDE = 56
PATCH = 14
PINPOINTS = [[56, 56], [56, 112], [112, 56], [112, 112]]
# Qwen2's pre-tokenizer (numbers as single digits), which Qwen2TokenizerFast also applies when it encodes.
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
NUM_IMAGE_TOKENS = (IMAGE_SIDE // PATCH) ** 2

# ChatML like LLaVA-OneVision's own template; accepts plain-string or list-of-parts content.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif part['type'] == 'video' %}{{ '<video>\n' }}{% endif %}{% endfor %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "Increase the wheel diameter to 120 mm so the rover clears rocks.",
    "Reduce the chassis length by 10% and keep the pan-tilt head centred.",
    '{"parameter": "wheel_diameter", "value": 110, "reason": "more ground clearance"}',
    "The sensor fork is too thin; make fork_thickness 4 mm for stiffness.",
    "Proposals: chassis_width 180, wheel_count 6, head_height 95.5, camera tilt 15 degrees.",
    "You are a CAD optimisation assistant. Answer with JSON proposals only.",
    "0123456789 mm cm deg % + - * / = ( ) [ ] { } : ; , . ! ?",
]
# Everyday English of mechanical design, so the tokenizer compresses text roughly as a real one does (a real
# LLaVA-OneVision tokenizer knows every English word; 512 byte pairs learnt from the lines above alone split most
# words into letters, which makes prompts 50% longer than they need to be).
_ENGLISH = (
    "the a an of to in on at by for with from and or not no is are be should would could make set change keep "
    "use add take off increase decrease reduce raise lower larger smaller bigger longer shorter wider narrower "
    "thicker thinner higher more less about around roughly please need want like looks right this that it as "
    "each every all both one two three four number count parameter parameters value values current range unit "
    "units description name model design part parts shape reference photo image images render view match "
    "length width height depth thickness diameter radius size distance spacing offset position angle rotation "
    "centre center top bottom front back side left right inner outer edge corner face hole holes slot slots "
    "wall floor lid lip base leg legs arm arms plate body box frame mount bracket shaft bearing housing bolt "
    "screw boss vent gusset fillet chamfer wheel wheels axle head fork sensor chassis mast pan tilt show hide "
    "include remove true false integer summary changes reason requested answer request"
)


def _train_tokenizer(vocab_size: int = 2048):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    from vlm.prompts import ANSWER_FORMAT, SYSTEM_TEMPLATE

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    words = _ENGLISH.split()
    # as the words appear in prompts: after a space, capitalised, and inside snake_case names ("_length")
    corpus = _CORPUS + [SYSTEM_TEMPLATE, ANSWER_FORMAT, " ".join(words), " ".join(w.capitalize() for w in words),
                        " ".join("_" + w for w in words)]
    raw.train_from_iterator(corpus * 4, trainer=trainer)
    data = json.loads(raw.to_str())
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in data["model"]["merges"]]
    tokenizer = Qwen2TokenizerFast(vocab=data["model"]["vocab"], merges=merges)
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _processor(tokenizer):
    from transformers import LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor

    size = {"height": IMAGE_SIDE, "width": IMAGE_SIDE}
    image_processor = LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=PINPOINTS)
    video_processor = LlavaOnevisionVideoProcessor(size=size)
    return LlavaOnevisionProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        num_image_tokens=NUM_IMAGE_TOKENS,
        vision_feature_select_strategy="full",
        chat_template=CHAT_TEMPLATE,
    )


def _config(tokenizer, *, text: dict, vision: dict, vocab_size: int | None = None):
    from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig

    vocab = max(vocab_size or 0, len(tokenizer))
    text_config = Qwen2Config(vocab_size=vocab, max_position_embeddings=4096, **text)
    vision_config = SiglipVisionConfig(image_size=IMAGE_SIDE, patch_size=PATCH, **vision)
    config = LlavaOnevisionConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=PINPOINTS,
    )
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config.text_config.eos_token_id = eos
    config.text_config.pad_token_id = tokenizer.pad_token_id
    return config, eos


# (strength, omega) per KV group: q/k bias on the rotary pair nearest omega (angle per token): logit 25 at
# distance 0, ~24 at 100 tokens, ~-20 at 800, so the request after the table outweighs the table. (A sharper
# "local" head at omega 0.03 is periodic, every ~200 tokens, over a prompt this long: not used.)
RECENCY_HEADS = ((10.0, 0.003),)


def add_recency_heads(model, heads=RECENCY_HEADS) -> int:
    """Give the first attention head of every text layer (one per entry of `heads`, in KV-group order) a
    content-free preference for recent tokens.

    Why: a random 64-wide model attends uniformly over an 800-token prompt, so the request (the last ~30 tokens,
    after the parameter table) is 3% of what any answer position sees, and LoRA on 2 cores does not find it
    (first-parameter accuracy 3/38 after 1500 steps, 14/38 after 4000). Real bases have local heads from
    pre-training. Here they are set by hand: a constant q and k bias on the rotary pair whose frequency is
    closest to omega makes the score `strength**2 * cos(omega * distance) / sqrt(head_dim)`, largest for the
    nearest tokens. Everything task-specific is still learnt (24-28/38 after 4000 steps). Returns the number of
    heads set.
    """
    import torch

    text = model.config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    theta = (getattr(text, "rope_parameters", None) or {}).get("rope_theta") or getattr(text, "rope_theta", 10000.0)
    freqs = [theta ** (-2 * i / head_dim) for i in range(head_dim // 2)]
    per_group = text.num_attention_heads // text.num_key_value_heads
    done = 0
    with torch.no_grad():
        for name, module in model.named_modules():
            if not ("language_model" in name and name.endswith("self_attn")):
                continue
            for group, (strength, omega) in enumerate(heads[:text.num_key_value_heads]):
                pair = min(range(len(freqs)), key=lambda i: abs(freqs[i] - omega))
                # the first query head of KV group `group`, and that group's key
                module.q_proj.bias[group * per_group * head_dim + pair] = strength
                module.k_proj.bias[group * head_dim + pair] = strength
                done += 1
    return done


def _save_base(model, processor, eos: int, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)


def build_tiny_model(out_dir: Path, *, seed: int = 0, perturb_lora: bool = True) -> tuple[Path, Path]:
    """Write a ~1 MB LLaVA-OneVision (fp32) to out_dir/base and a LoRA adapter to out_dir/adapter."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlavaOnevisionForConditionalGeneration

    out_dir = Path(out_dir)
    base_dir, adapter_dir = out_dir / "base", out_dir / "adapter"
    torch.manual_seed(seed)
    tokenizer = _train_tokenizer()
    processor = _processor(tokenizer)
    config, eos = _config(
        tokenizer,
        # Tied embeddings as in Qwen2-0.5B (copying a token then needs no learnt output map), and weights drawn at
        # about 1/sqrt(hidden): at the usual 0.02 a 64-wide random model's attention is uniform and LoRA on it
        # learns the answers' format but never where in the prompt to look.
        text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, tie_word_embeddings=True, initializer_range=0.1),
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
    )
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    add_recency_heads(model)
    _save_base(model, processor, eos, base_dir)

    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                      target_modules=r".*language_model.*\.(q_proj|v_proj)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft calls a transformers API deprecated in v5
        peft_model = get_peft_model(model, lora)
    if perturb_lora:
        # lora_B starts at zero (a no-op adapter); random values make the adapter change the output.
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    peft_model.save_pretrained(adapter_dir, safe_serialization=True)
    _fix_adapter_base(adapter_dir, base_dir)
    return base_dir, adapter_dir


def _fix_adapter_base(adapter_dir: Path, base_dir: Path) -> None:
    path = adapter_dir / "adapter_config.json"
    data = json.loads(path.read_text())
    data["base_model_name_or_path"] = str(base_dir)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def build_synthetic_model(out_dir: Path, *, dtype: str = "float16", seed: int = 0) -> Path:
    """Write a ~0.5B-parameter LLaVA-OneVision of realistic shape (Qwen2-0.5B text, small SigLIP), random weights."""
    import torch
    from transformers import LlavaOnevisionForConditionalGeneration

    out_dir = Path(out_dir)
    base_dir = out_dir / "base"
    torch.manual_seed(seed)
    tokenizer = _train_tokenizer()
    processor = _processor(tokenizer)
    config, eos = _config(
        tokenizer,
        text=dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1_000_000.0),
        vision=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4),
        vocab_size=151_936,
    )
    torch_dtype = getattr(torch, dtype)
    model = LlavaOnevisionForConditionalGeneration._from_config(config, dtype=torch_dtype).eval()
    _save_base(model, processor, eos, base_dir)
    return base_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--synthetic", action="store_true", help="the ~0.5B fp16 model instead of the tiny one")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.synthetic:
        base = build_synthetic_model(args.out_dir, seed=args.seed)
        print(f"base model: {base}")
    else:
        base, adapter = build_tiny_model(args.out_dir, seed=args.seed)
        print(f"base model: {base}\nadapter:    {adapter}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
