"""Lab 1 studies: MLP capacity, residual MLP/CNN over depth, ResNet-18, then transfer and CAM (which start
from a trained CNN: their `source`, found in MLflow by orchestrator.sources)."""
from __future__ import annotations

from typing import Any, Mapping

from search_spaces import lab1 as lab1_spaces
from trainables import plots
from trainables.lab1 import cam, classifier, figures as lab1_figures, source as lab1_source, transfer

from ..study import DEEPEST, Finding, Profile, SourceModel, Study, grid


def _skip_helps_at_depth(what: str) -> Finding:
    return Finding(claim=f"the skip keeps the deepest {what} trainable", metric="best_val_acc", factor="residual",
                   treatment=True, control=False, at={"depth": DEEPEST}, labels=("residual", "plain"))


# Quick profile: digits (1,797 real 8x8 images) in place of MNIST and CIFAR-10.
_MLP_QUICK = {"dataset": "digits", "epochs": 10, "batch_size": 64, "width": 64, "val_fraction": 0.15}
_MLP_FULL = {"dataset": "mnist", "epochs": 20, "batch_size": 128, "width": 128, "val_fraction": 5000 / 60000}
_CNN_QUICK = {"model": "cnn", "dataset": "digits", "epochs": 8, "batch_size": 64, "width": 16, "crop_pad": 1,
              "flip": False, "val_fraction": 0.15}  # digits are not mirror-symmetric: no flips
_CNN_FULL = {"model": "cnn", "dataset": "cifar10", "epochs": 30, "batch_size": 256, "width": 32, "crop_pad": 4,
             "flip": True, "optimizer": "sgd", "weight_decay": 5e-4, "val_fraction": 0.1}

# ---------------------------------------------------------------- transfer and CAM: the source CNN
# Quick: a CNN trained on digits 0-4, reused on digits 5-9 with only a few training images (the
# regime where transfer matters); full: the best CIFAR-10 CNN, reused on CIFAR-100.
_OWN_SOURCE_QUICK = {"source_dataset": "digits", "source_model": "cnn", "source_width": 32, "source_depth": 1,
                     "source_residual": True, "source_num_stages": 3, "source_epochs": 20, "source_batch_size": 64,
                     "source_lr": 3e-3, "source_optimizer": "adam", "source_crop_pad": 1, "source_flip": False,
                     "source_val_fraction": 0.15}
_OWN_SOURCE_FULL = {"source_dataset": "cifar10", "source_model": "cnn", "source_width": 32, "source_depth": 2,
                    "source_residual": True, "source_num_stages": 3, "source_epochs": 30, "source_batch_size": 256,
                    "source_lr": 0.05, "source_optimizer": "sgd", "source_weight_decay": 5e-4, "source_crop_pad": 4,
                    "source_flip": True, "source_val_fraction": 0.1}
_TRANSFER_QUICK = {**_OWN_SOURCE_QUICK, "source_classes": (0, 1, 2, 3, 4), "dataset": "digits",
                   "classes": (5, 6, 7, 8, 9), "max_train": 20, "val_fraction": 0.15, "epochs": 15, "batch_size": 32,
                   "crop_pad": 1, "flip": False}
_TRANSFER_FULL = {**_OWN_SOURCE_FULL, "dataset": "cifar100", "classes": (), "max_train": 0, "val_fraction": 0.1,
                  "epochs": 15, "batch_size": 256, "crop_pad": 4, "flip": True, "weight_decay": 5e-4}
# CAM quick: two stages, so the last maps of an 8x8 digit are 4x4 (three stages would leave 2x2).
_CAM_QUICK = {**_OWN_SOURCE_QUICK, "source_width": 16, "source_num_stages": 2, "source_epochs": 5,
              "images_per_class": 3, "mistakes": 6, "max_eval": 300}
_CAM_FULL = {**_OWN_SOURCE_FULL, "images_per_class": 4, "mistakes": 8, "max_eval": 1000}


# What makes a trained CNN unfit as the source (pure: checked by the driver on the loaded model).
def _transfer_conflict(cfg: Any, model: Any, base: Mapping[str, Any]) -> str | None:
    return lab1_source.transfer_conflict(cfg, model.state_dict(), base["dataset"], tuple(base.get("classes", ())))


def _cam_conflict(cfg: Any, model: Any, base: Mapping[str, Any]) -> str | None:
    return lab1_source.cam_conflict(cfg, model)


STUDIES = [
    Study(lab="lab1", name="mlp-capacity", question="How does MLP width (3/10/64 units) limit accuracy?",
          trainable=classifier.train, config_cls=classifier.Lab1Config, space=lab1_spaces.mlp_capacity,
          # the lab's MLP: one hidden layer (depth 0: no residual blocks) of 3, 10 or 64 units
          profiles={"quick": Profile(base={**_MLP_QUICK, "depth": 0}, per_cell=2, searched=("width",)),
                    "full": Profile(base={**_MLP_FULL, "depth": 0}, per_cell=4, datasets=("mnist",),
                                    searched=("width",))},
          early_stopping=False, gpus_per_trial=0.25, test_once=True, cells=grid(width=lab1_spaces.MLP_WIDTHS),
          findings=(Finding(claim="64 hidden units learn more than 3", metric="best_val_acc", factor="width",
                            treatment=64, control=3, labels=("64 units", "3 units")),),
          compare=lambda rows: plots.metric_by(rows, "width", "val_acc", log_x=True,
                                               title="best validation accuracy vs width"),
          references="MNIST MLP, 1 hidden layer: 3 units ~70%, 10 units ~93%, 64 units ~97.4% test.",
          cell_references=(({"width": 3}, "~70% test"), ({"width": 10}, "~93% test"), ({"width": 64}, "~97.4% test"))),
    Study(lab="lab1", name="residual-mlp", question="Do residual connections keep deep MLPs trainable?",
          trainable=classifier.train, config_cls=classifier.Lab1Config, space=lab1_spaces.residual_mlp,
          profiles={"quick": Profile(base={**_MLP_QUICK, "grad_norms": True}, per_cell=2),
                    "full": Profile(base={**_MLP_FULL, "grad_norms": True}, per_cell=2, datasets=("mnist",))},
          early_stopping=False, gpus_per_trial=0.25, test_once=True, compare=lab1_figures.depth_comparison,
          cells=grid(depth=lab1_spaces.DEPTHS, residual=(False, True)), findings=(_skip_helps_at_depth("MLP"),),
          references="plain MLP collapses to ~11% (chance) at depth >= 8-16 while the residual MLP stays ~94-98% "
                     "at depth 32-50.",
          cell_references=(({"depth": 16, "residual": False}, "~11% (chance)"),
                           ({"depth": 32, "residual": False}, "~11% (chance)"),
                           ({"depth": 32, "residual": True}, "~94-98%"))),
    Study(lab="lab1", name="residual-cnn", question="Do residual connections keep deep CNNs trainable (CIFAR-10)?",
          trainable=classifier.train, config_cls=classifier.Lab1Config, space=lab1_spaces.residual_cnn,
          profiles={"quick": Profile(base={**_CNN_QUICK, "grad_norms": True}, per_cell=2),
                    "full": Profile(base={**_CNN_FULL, "grad_norms": True}, per_cell=2, datasets=("cifar10",))},
          early_stopping=False, gpus_per_trial=0.25, test_once=True, compare=lab1_figures.depth_comparison,
          cells=grid(depth=lab1_spaces.CNN_DEPTHS, residual=(False, True)), findings=(_skip_helps_at_depth("CNN"),),
          references="CIFAR-10 plain CNN accuracy falls with depth (76.6% -> 27.5% from 2-2-2-2 to 5-6-8-5 stages) "
                     "while residual stays ~78-86% (ResNet-20..56: plain 82.1 -> 73.8%, residual ~85.2-85.8%).",
          cell_references=(({"depth": 2, "residual": False}, "76.6% (2-2-2-2 blocks)"),
                           ({"depth": 8, "residual": False}, "27.5% (5-6-8-5 blocks)"),
                           ({"depth": 8, "residual": True}, "~78-86%"))),
    Study(lab="lab1", name="resnet", question="How well does ResNet-18 (CIFAR stem) train, and with which recipe?",
          trainable=classifier.train, config_cls=classifier.Lab1Config, space=lab1_spaces.resnet,
          # the recipe's batch size, optimizer and weight decay are what the study searches
          profiles={"quick": Profile(base={**_CNN_QUICK, "model": "resnet18", "epochs": 4}, per_cell=2,
                                     searched=("batch_size",)),
                    "full": Profile(base={**_CNN_FULL, "model": "resnet18", "epochs": 30}, per_cell=6,
                                    datasets=("cifar10",), searched=("batch_size", "optimizer", "weight_decay"))},
          early_stopping=True, grace_period=2, gpus_per_trial=0.5, test_once=True,
          cells=grid(optimizer=("sgd", "adam")),
          compare=lambda rows: plots.metric_by(rows, "lr", "val_acc", group="optimizer",
                                               title="best validation accuracy vs lr"),
          references="ResNet-18 from scratch on CIFAR-10: ~85-95% depending on epochs."),
    Study(lab="lab1", name="transfer",
          question="Do CIFAR-10 features transfer to CIFAR-100: frozen + SVM/kNN, new head, fine-tuning?",
          trainable=transfer.train, config_cls=transfer.TransferConfig, space=lab1_spaces.transfer,
          profiles={"quick": Profile(base=_TRANSFER_QUICK, per_cell=2),
                    "full": Profile(base=_TRANSFER_FULL, per_cell=3, datasets=("cifar10", "cifar100"))},
          early_stopping=False, gpus_per_trial=0.5, test_once=True, compare=lab1_figures.transfer_comparison,
          # fine-tuning vs from scratch first: the comparison that says whether transfer helped
          cells=grid(variant=("finetune", "scratch", "linear-svc", "head", "knn")),
          findings=(Finding(claim="the source's features help: fine-tuning beats training from scratch",
                            metric="best_val_acc", factor="variant", treatment="finetune", control="scratch"),),
          source=SourceModel(candidates=(("residual-cnn", "resnet"), ("residual-cnn",), ("resnet",)),
                             load=lab1_source.load_checkpoint_model, conflict=_transfer_conflict),
          references="CIFAR-100 transfer from a CIFAR-10 CNN: linear SVM on features ~23-42%, fine-tuning ~40-55%.",
          cell_references=(({"variant": "linear-svc"}, "~23-42%"), ({"variant": "finetune"}, "~40-55%"))),
    Study(lab="lab1", name="cam",
          question="Where does the trained CNN look? CAM vs Grad-CAM heat maps, and how faithful they are",
          trainable=cam.train, config_cls=cam.CamConfig, space=lab1_spaces.cam,
          # nothing is tuned inside a cell (the source model is fixed): one trial each
          profiles={"quick": Profile(base=_CAM_QUICK, per_cell=1),
                    "full": Profile(base=_CAM_FULL, per_cell=1, datasets=("cifar10",))},
          metric="val_faithfulness", early_stopping=False, gpus_per_trial=0.25, test_once=True,
          compare=lab1_figures.cam_comparison,
          # "The trained CNN" first; a ResNet-18 on 8x8 digits ends in 1x1 maps (rejected by cam_conflict).
          source=SourceModel(candidates=(("residual-cnn",), ("resnet",)), load=lab1_source.load_checkpoint_model,
                             conflict=_cam_conflict),
          # CAM and Grad-CAM on the same maps first (identical for a GAP + linear net), then the rest
          cells=({"method": "cam"}, {"method": "gradcam", "layer": "last"}, {"method": "gradcam", "layer": "previous"},
                 {"method": "gradcam++", "layer": "previous"}, {"method": "gradcam++", "layer": "last"}),
          report_metrics=("val_faithfulness",)),
]
