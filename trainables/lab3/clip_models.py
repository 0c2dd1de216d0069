"""CLIP for Lab 3: zero-shot classifiers from text prompts, image/text embeddings, and an offline stand-in.

Zero-shot (Radford et al. 2021): each class gets the text embedding of "a photo of a {class}." (or
the mean of several templates' L2-normalised embeddings, renormalised: prompt ensembling); an image
is classified by logits = scale * cos(image embedding, class embedding). No training on the labels.

Offline stand-in ("tiny"): a 2-layer CLIP built from CLIPConfig (16x16 images, 4x4 patches), a
word-level tokenizer, and synthetic "shapes": a coloured square/ring/cross/stripes on a background,
16 classes named "<colour> <shape>". Its "pretraining" is a short contrastive training on captions
of a *source* domain (clean grey background); the evaluated dataset is a *target* domain (random
background colours, stronger noise, colour jitter). So zero-shot on the target is genuinely
zero-shot (prompt templates partly unseen, target images never seen with labels) and imperfect, and
LoRA adaptation on few target shots has room to raise it: what the quick profile can show. It cannot
show anything about real images or prompt wording: its "language" has 30 words.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's pixel statistics
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
COLORS = {"red": (0.9, 0.15, 0.1), "green": (0.15, 0.75, 0.2), "blue": (0.15, 0.3, 0.95), "yellow": (0.95, 0.85, 0.1)}
SHAPES = ("square", "ring", "cross", "stripes")
SHAPE_CLASSES = tuple(f"{c} {s}" for c in COLORS for s in SHAPES)
# Prompt templates. The quick set has captions the tiny model saw ("a photo of a ...", "a ...") and
# ones it did not ("a picture of ...", "a drawing of ..."); the full set is CLIP's CIFAR ensemble.
TEMPLATES = {
    "tiny": ("a photo of a {}.", "a {}.", "a picture of a {}.", "a drawing of a {}."),
    "full": ("a photo of a {}.", "a blurry photo of a {}.", "a black and white photo of a {}.",
             "a low contrast photo of a {}.", "a high contrast photo of a {}.", "a bad photo of a {}.",
             "a good photo of a {}.", "a photo of a small {}.", "a photo of a big {}.", "a photo of the {}.",
             "a blurry photo of the {}.", "a black and white photo of the {}.", "a low contrast photo of the {}.",
             "a high contrast photo of the {}.", "a bad photo of the {}.", "a good photo of the {}.",
             "a photo of the small {}.", "a photo of the big {}."),
}
CAPTIONS = ("a photo of a {}.", "a {}.", "a {1} {0}.", "an image of a {}.")  # pretraining; {1} {0}: shape first
SPECIAL = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")  # EOS id 3: CLIP pools at the first EOS (id 2 means legacy argmax)
IMAGE_SIZE = 16
# The target domain's shift from the source (standard deviations, pixel values in [0, 1]).
TARGET_SHIFT = {"brightness": (0.35, 0.65), "tint": 0.05, "noise": 0.07, "jitter": 0.05}


# ---------------------------------------------------------------- synthetic shapes
def _masks() -> dict[str, np.ndarray]:
    m = {s: np.zeros((6, 6), bool) for s in SHAPES}
    m["square"][:] = True
    m["ring"][[0, -1], :] = m["ring"][:, [0, -1]] = True
    m["cross"][2:4, :] = m["cross"][:, 2:4] = True
    m["stripes"][::2, :] = True
    return m


def render_shapes(labels: np.ndarray, rng: np.random.Generator, domain: str) -> np.ndarray:
    """uint8 images (N, 3, 16, 16) of the classes `labels` (index into SHAPE_CLASSES). 'source': mid-grey
    background, mild noise; 'target': tinted background of random brightness, colour jitter, more noise."""
    n, masks, colors = len(labels), _masks(), np.array(list(COLORS.values()))
    target = domain == "target"
    if target:
        bg = rng.uniform(*TARGET_SHIFT["brightness"], (n, 1, 1, 1)) + rng.normal(0, TARGET_SHIFT["tint"], (n, 3, 1, 1))
    else:
        bg = np.full((n, 3, 1, 1), 0.5)
    x = bg + rng.normal(0, TARGET_SHIFT["noise"] if target else 0.04, (n, 3, IMAGE_SIZE, IMAGE_SIZE))
    for i, y in enumerate(labels):
        color = colors[y // len(SHAPES)] + (rng.normal(0, TARGET_SHIFT["jitter"], 3) if target else 0)
        r, c = rng.integers(0, IMAGE_SIZE - 6, 2)
        patch = x[i, :, r:r + 6, c:c + 6]
        mask = masks[SHAPES[y % len(SHAPES)]]
        patch[:, mask] = color[:, None] + rng.normal(0, 0.03, (3, mask.sum()))
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


def shapes_split(n: int, seed: int, domain: str = "target") -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % len(SHAPE_CLASSES))
    return torch.from_numpy(render_shapes(y, rng, domain)), torch.from_numpy(y.astype(np.int64))


# ---------------------------------------------------------------- tiny tokenizer and model
def tiny_vocabulary() -> list[str]:
    words = set(" ".join(COLORS).split()) | set(SHAPES)
    for t in TEMPLATES["tiny"] + CAPTIONS:
        words |= set(t.replace("{}", " ").replace("{0}", " ").replace("{1}", " ").replace(".", " . ").split())
    return list(SPECIAL) + sorted(words)


def tiny_tokenizer():
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(tiny_vocabulary())}
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A [EOS]",
                                                       special_tokens=[("[BOS]", 2), ("[EOS]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]",
                                   eos_token="[EOS]", model_max_length=16)


def tiny_clip_config(vocab_size: int):
    from transformers import CLIPConfig

    # Both towers 64 wide, 2 layers, 4 heads; 16 patches of 4x4 pixels; 32-dim joint space (~0.2M params).
    text = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=16, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    vision = dict(image_size=IMAGE_SIZE, patch_size=4, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_channels=3)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)


# Contrastive "pretraining" of the tiny CLIP on source-domain captions: 16 distinct classes per batch
# (no false negatives), 600 steps at lr 2e-3 (~15 s on one core).
CLIP_RECIPE = {"steps": 600, "lr": 2e-3, "seed": 4321, "version": 1}


def pretrain_tiny_clip(tokenizer: Any, config: Any) -> dict[str, torch.Tensor]:
    from transformers import CLIPModel

    r = CLIP_RECIPE
    torch.manual_seed(r["seed"])
    model = CLIPModel(config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=r["lr"], weight_decay=0.01)
    rng = np.random.default_rng(r["seed"])
    for _ in range(r["steps"]):
        y = rng.permutation(len(SHAPE_CLASSES))
        images = torch.from_numpy(render_shapes(y, rng, "source"))
        captions = [_caption(int(k), rng) for k in y]
        text = tokenizer(captions, padding=True, return_tensors="pt")
        out = model(input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                    pixel_values=pixels(images, IMAGE_SIZE), return_loss=True)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _caption(k: int, rng: np.random.Generator) -> str:
    color, shape = SHAPE_CLASSES[k].split()
    template = CAPTIONS[rng.integers(len(CAPTIONS))]
    return template.format(shape, color) if "{1}" in template else template.format(f"{color} {shape}")


def load_clip(model: str, data_dir: Path | None) -> tuple[nn.Module, Any]:
    """(CLIPModel, tokenizer): 'tiny' = the stand-in after its cached pretraining; otherwise a hub id
    loaded from the data folder's snapshot (trainables/hub.py), never from the network."""
    from transformers import AutoTokenizer, CLIPModel

    if model != "tiny":
        from ..hub import local_snapshot

        source = local_snapshot(f"hf-model:{model}", data_dir)
        return CLIPModel.from_pretrained(source), AutoTokenizer.from_pretrained(source)
    from .stand_ins import cached_state

    tokenizer, config = tiny_tokenizer(), tiny_clip_config(len(tiny_vocabulary()))
    recipe = {**CLIP_RECIPE, "config": config.to_diff_dict(), "vocab": tiny_vocabulary()}
    state = cached_state("clip", recipe, lambda: pretrain_tiny_clip(tokenizer, config), data_dir)
    net = CLIPModel(config)
    net.load_state_dict(state)
    return net, tokenizer


# ---------------------------------------------------------------- embeddings and the zero-shot head
def pixels(images: torch.Tensor, size: int) -> torch.Tensor:
    """CLIP's input from uint8 images or floats in [0, 1]: bicubic resize of the whole (square) image
    to `size`, then CLIP normalisation."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp_(0, 1)
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def ensemble(text_emb: torch.Tensor) -> torch.Tensor:
    """(classes, templates, dim) -> (classes, dim): mean of the L2-normalised template embeddings,
    renormalised (CLIP's prompt ensembling). One template: just its normalised embedding."""
    return F.normalize(F.normalize(text_emb, dim=-1).mean(dim=1), dim=-1)


def zero_shot_logits(image_emb: torch.Tensor, class_emb: torch.Tensor, scale: float | torch.Tensor = 100.0) -> torch.Tensor:
    """scale * cosine similarity of every image with every class embedding: (images, classes)."""
    return scale * F.normalize(image_emb, dim=-1) @ F.normalize(class_emb, dim=-1).T


def prompts(class_names: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Class-major list: prompts[c * T + t] = templates[t] filled with class c."""
    return [t.format(name) for name in class_names for t in templates]


class PromptClassifier(nn.Module):
    """A CLIP model as a classifier over `class_names`: forward(images) -> zero-shot logits.
    Class embeddings are recomputed in each forward while the text tower trains (LoRA on text), and
    cached otherwise. One module, so DDP sees every trainable parameter in forward."""

    def __init__(self, clip: nn.Module, tokenizer: Any, class_names: Sequence[str], templates: Sequence[str]) -> None:
        super().__init__()
        self.clip, self.num_templates = clip, len(templates)
        enc = tokenizer(prompts(class_names, templates), padding=True, truncation=True, return_tensors="pt")
        self.register_buffer("input_ids", enc["input_ids"], persistent=False)
        self.register_buffer("attention_mask", enc["attention_mask"], persistent=False)
        self.image_size = int(clip.config.vision_config.image_size)
        self._cached: torch.Tensor | None = None

    def text_trainable(self) -> bool:
        return any(p.requires_grad for p in self.clip.text_model.parameters())

    def class_embeddings(self) -> torch.Tensor:
        if self._cached is not None and not (self.training and self.text_trainable()):
            return self._cached
        with torch.set_grad_enabled(self.training and self.text_trainable()):
            emb = self.clip.get_text_features(input_ids=self.input_ids, attention_mask=self.attention_mask).pooler_output
            emb = ensemble(emb.view(-1, self.num_templates, emb.shape[-1]))
        self._cached = None if emb.requires_grad else emb
        return emb

    def train(self, mode: bool = True) -> "PromptClassifier":
        self._cached = None  # the text tower may have changed since the embeddings were cached
        return super().train(mode)

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        return self.clip.get_image_features(pixel_values=pixels(images, self.image_size)).pooler_output

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return zero_shot_logits(self.image_embeddings(images), self.class_embeddings(), self.clip.logit_scale.exp())
