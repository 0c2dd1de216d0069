"""Lab 4 studies: OOD detection, FGSM, FGSM adversarial training, targeted attacks.

Quick profile: sklearn's 8x8 digits as in-distribution (OOD: uniform noise and FakeData, the ood
study's cells; held-out digit classes with `--set ood_set=heldout classes=0,1,2,3,4`), eps on the digits' scale
(0.1 = 25.5/255). Full profile: CIFAR-10 in-distribution, CIFAR-100 (classes absent from CIFAR-10),
SVHN or FakeData as OOD, ResNet-18, eps in {0, 1, 2, 4, 8, 16}/255.
"""
from __future__ import annotations

from search_spaces import lab4 as spaces
from trainables.lab4 import figures as lab4_figures, robustness

from ..study import Finding, LabTable, Profile, SourceModel, Study, grid

DIGITS_GRID = (0.0, 0.025, 0.05, 0.1, 0.2, 0.3)  # pixel units: 0, 6.4, 12.8, 25.5, 51, 76.5 /255

_QUICK = {"dataset": "digits", "model": "cnn", "width": 16, "depth": 1, "num_stages": 2, "epochs": 10,
          "batch_size": 64, "lr": 3e-3, "val_fraction": 0.15, "max_eval": 0,
          "eps_grid": DIGITS_GRID, "epsilon": 0.1, "eval_eps": 0.1, "attack_step": 0.01, "attack_steps": 50}
_FULL = {"dataset": "cifar10", "model": "resnet18", "epochs": 30, "batch_size": 256, "optimizer": "sgd",
         "lr": 0.05, "weight_decay": 5e-4, "crop_pad": 4, "flip": True, "val_fraction": 0.1, "max_eval": 1000,
         "eps_grid": robustness.CIFAR_GRID, "epsilon": 8 / 255, "eval_eps": 8 / 255, "attack_step": 1 / 255,
         "attack_steps": 50, "ae_width": 32, "ae_latent": 128, "ae_lr": 1e-3}

# The post-hoc studies (ood, fgsm, targeted) probe a trained model: `--set source_run=<MLflow run>`, else
# the best trial of the latest `classifier` study that fits (same data, classes, architecture and split),
# else the first trial trains one and the others probe it (trainables/lab4/shared.py).
_PROBED = SourceModel(candidates=(("classifier",),), load=robustness.load_probed,
                      conflict=robustness.probed_conflict,
                      when_none="the first trial trains the model once (seeded), the others wait and probe it "
                                "(shared through {where})")

STUDIES = [
    Study(lab="lab4", name="classifier",
          question="How well does the classifier (and autoencoder) that the OOD and attack studies probe learn?",
          trainable=robustness.train, config_cls=robustness.Lab4Config, space=spaces.classifier,
          # quick: the ood study's CNN (fgsm and targeted probe other architectures there); full: the ResNet-18
          # that every post-hoc study probes
          profiles={"quick": Profile(base={**_QUICK, "task": "train"}, per_cell=4, searched=("lr",)),
                    "full": Profile(base={**_FULL, "task": "train"}, per_cell=4, datasets=("cifar10",),
                                    searched=("optimizer", "lr"))},
          metric="val_acc", early_stopping=True, grace_period=3, gpus_per_trial=0.5, test_once=True,
          report_metrics=("test_acc", "ae_val_loss"),
          references="ResNet-18 on CIFAR-10 with SGD, 30 epochs: ~93-95% test accuracy."),
    Study(lab="lab4", name="ood",
          question="Which score separates ID from OOD images best (MSP, max logit, energy, ODIN, autoencoder), "
                   "against each OOD set?",
          trainable=robustness.train, config_cls=robustness.Lab4Config, space=spaces.ood,
          # Every OOD set is a cell, scored against the same model (the shared model ignores ood_set):
          # quick, the bundled sets; full, those and CIFAR-100 and SVHN. ODIN's T and eps are tuned per set.
          profiles={"quick": Profile(base={**_QUICK, "task": "ood", "ood_set": "noise"}, per_cell=3,
                                     searched=("ood_set",), cells=grid(ood_set=spaces.QUICK_OOD_SETS)),
                    "full": Profile(base={**_FULL, "task": "ood", "ood_set": "cifar100"}, per_cell=6,
                                    datasets=("cifar10", "cifar100", "svhn"), searched=("ood_set",))},
          metric="val_auroc", early_stopping=False, gpus_per_trial=0.5, test_once=True,
          compare=lab4_figures.ood_compare,
          trial_figures=lab4_figures.ood_trial_figures,
          cells=grid(ood_set=spaces.OOD_SETS), source=_PROBED,
          report_metrics=("auroc/msp", "auroc/msp_t", "auroc/maxlogit", "auroc/energy", "auroc/odin", "auroc/ae",
                          "fpr95/msp", "fpr95/energy"),
          references="MSP AUROC on CIFAR-10 (WRN/ResNet-18) vs CIFAR-100 ~88%, vs SVHN ~92%; energy improves FPR95 by "
                     "~18 points over MSP; autoencoder reconstruction error is weak on natural images (can fall below "
                     "50% vs SVHN) but ~0.94 vs FakeData noise."),
    Study(lab="lab4", name="fgsm",
          question="How fast does accuracy fall with the FGSM eps; what L-inf budget does iterative FGSM need?",
          trainable=robustness.train, config_cls=robustness.Lab4Config, space=spaces.fgsm,
          # The compared models: quick, MLP vs CNN (the space's choice); full, the profile's ResNet-18 only.
          profiles={"quick": Profile(base={**_QUICK, "task": "fgsm", "width": 32}, per_cell=2,
                                     searched=("model", "epsilon")),
                    "full": Profile(base={**_FULL, "task": "fgsm"}, per_cell=6, datasets=("cifar10",),
                                    pinned=("model",), searched=("epsilon",))},
          # single-step success at the trial's eps (validation): what the eps search changes
          metric="val_success_rate", early_stopping=False, gpus_per_trial=0.5, test_once=True,
          compare=lab4_figures.fgsm_compare,
          cells=grid(model=spaces.FGSM_MODELS), source=_PROBED,
          # accuracy at every eps of the profile's grid, one column each (the lab's accuracy-vs-eps table)
          report_metrics=("test_acc", "acc_eps/*", "success_rate", "iter_success_rate", "mean_linf_255"),
          references="Accuracy vs eps (0/1/2/4/8/16 /255) of a CIFAR ResNet-20: 83.1 / 55.3 / 35.5 / 20.3 / 14.1 / "
                     "11.8%."),
    Study(lab="lab4", name="adv-train",
          question="Does FGSM-RS adversarial training buy robustness; what does it do to OOD detection?",
          trainable=robustness.train, config_cls=robustness.Lab4Config, space=spaces.adv_train,
          # mix is searched (mix 0 = standard training is the baseline); 1.0 is Wong et al.'s, used in-process
          profiles={"quick": Profile(base={**_QUICK, "task": "adv-train", "ood_set": "noise", "epochs": 8},
                                     per_cell=2, searched=("epsilon",)),
                    "full": Profile(base={**_FULL, "task": "adv-train", "ood_set": "cifar100", "epochs": 15,
                                          "mix": 1.0, "lr": 0.1}, per_cell=4, datasets=("cifar10", "cifar100"),
                                    searched=("epsilon", "mix"))},
          metric="val_robust_acc", early_stopping=False, gpus_per_trial=0.5, test_once=True,
          compare=lab4_figures.adv_train_compare,
          trial_figures=lab4_figures.ood_trial_figures,
          cells=grid(mix=spaces.ADV_MIXES),
          findings=(Finding(claim="FGSM-RS training (mix 1) buys robustness over standard training (mix 0)",
                            metric="best_val_robust_acc", factor="mix", treatment=1.0, control=0.0,
                            labels=("adversarial", "standard")),),
          report_metrics=("test_acc", "fgsm_acc", "pgd_acc", "auroc/msp", "auroc/energy", "catastrophic_overfit"),
          references="FGSM adversarial training with random init, eps 8/255, PreAct ResNet-18: 86.1% clean / 46.1% PGD "
                     "in 12 minutes (Wong, Rice, Kolter 2020)."),
    Study(lab="lab4", name="targeted",
          question="How large a budget does iterative targeted FGSM need, per target class?",
          trainable=robustness.train, config_cls=robustness.Lab4Config, space=spaces.targeted,
          profiles={"quick": Profile(base={**_QUICK, "task": "targeted", "model": "mlp", "width": 64}, per_cell=2,
                                     searched=("epsilon",)),
                    "full": Profile(base={**_FULL, "task": "targeted"}, per_cell=2, datasets=("cifar10",),
                                    searched=("epsilon",))},
          # success toward the trial's target within its budget (validation); every target class is a cell
          metric="val_success_rate", early_stopping=False, gpus_per_trial=0.5, test_once=True,
          compare=lab4_figures.targeted_compare, cells=grid(target=spaces.TARGETS), source=_PROBED,
          report_metrics=("success_rate", "success_within_steps", "mean_linf", "test_acc"),
          references="Targeted success at eps 0.025: ~13-37% depending on the target class."),
]

TABLES = [
    # one row per score and OOD set: the ood study's cells (a `--set ood_set=...` run fills its set's rows)
    LabTable(title="OOD detection: every score against each OOD set (each set's selected trial, test split)",
             kind="scores", studies=("ood",), scores=("msp", "msp_t", "maxlogit", "energy", "odin", "ae"),
             measures=("auroc", "aupr_in", "aupr_out", "fpr95"), by="ood_set"),
]
