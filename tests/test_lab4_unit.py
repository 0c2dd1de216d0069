"""Lab 4's config, trainable plumbing (reports, files, resume) and parent-run figures, on tiny
shrunk quick-profile configs (a second or two each, no Ray)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from orchestrator.studies import get_study, studies_of
from trainables.lab4 import figures as lab4_plots
from trainables.config import ConfigError, from_dict
from trainables.context import LocalContext
from trainables.lab4.robustness import Lab4Config, collapsed, train
from trainables.lab4.evaluation import eps_key

TINY = {"model": "mlp", "width": 16, "epochs": 2, "eps_grid": (0.0, 0.1), "attack_steps": 5, "attack_step": 0.05,
        "pgd_steps": 2, "max_eval": 64}


def tiny(study: str, **overrides) -> Lab4Config:
    return from_dict(Lab4Config, {**get_study("lab4", study).base_config("quick"), **TINY, **overrides})


def run(cfg: Lab4Config, ctx: LocalContext | None = None) -> tuple[dict[str, float], LocalContext]:
    torch.set_num_threads(1)
    ctx = ctx or LocalContext()
    return train(cfg, ctx), ctx


_RUNS: dict[tuple[str, int], tuple[dict[str, float], LocalContext]] = {}


def cached(study: str, seed: int) -> tuple[dict[str, float], LocalContext]:
    """One tiny run per (study, seed), shared by the tests below (target 1 for `targeted`)."""
    if (study, seed) not in _RUNS:
        _RUNS[study, seed] = run(tiny(study, seed=seed, target=1))
    return _RUNS[study, seed]


@pytest.mark.parametrize("values, key", [
    ({"epsilon": 8}, "epsilon"),                      # 8 pixel levels meant as 8/255: out of [0, 1]
    ({"eps_grid": "0,0.1,0.05"}, "eps_grid"),
    ({"eps_grid": "0,1.5"}, "eps_grid"),
    ({"mix": 1.5}, "mix"),
    ({"ood_set": "heldout"}, "ood_set"),              # needs classes to hold some labels out
    ({"ood_set": "svhn", "dataset": "digits"}, "ood_set"),
    ({"task": "pgd"}, "task"),
    ({"co_ratio": 1.0}, "co_ratio"),
    ({"temperature": 0}, "temperature"),
])
def test_bad_config_values_name_their_key(values, key):
    with pytest.raises(ConfigError, match=key):
        from_dict(Lab4Config, values)


def test_config_coerces_command_line_strings():
    cfg = from_dict(Lab4Config, {"eps_grid": "0,0.0039,0.0314", "epsilon": "0.0314", "classes": "0,1,2,3,4",
                                 "ood_set": "heldout", "random_start": "false"})
    assert cfg.eps_grid == (0.0, 0.0039, 0.0314) and cfg.classes == (0, 1, 2, 3, 4) and not cfg.random_start


def test_every_study_profile_is_a_valid_config():
    for study in studies_of("lab4"):
        for profile in ("quick", "full"):
            cfg = from_dict(Lab4Config, study.base_config(profile))
            assert cfg.task == {"classifier": "train"}.get(study.name, study.name)


def test_target_beyond_the_classes_is_an_error():
    with pytest.raises(ConfigError, match="target"):
        run(tiny("targeted", classes=(0, 1, 2, 3, 4), target=7))


def test_eps_keys_tell_the_cifar_grid_apart():
    keys = [eps_key(e / 255) for e in (0, 1, 2, 4, 8, 16)]
    assert keys == ["0.0000", "0.0039", "0.0078", "0.0157", "0.0314", "0.0627"]


def test_collapse_rule():
    cfg = Lab4Config()
    assert not collapsed({"val_pgd_acc": 0.5, "val_fgsm_acc": 0.6}, 0.6, cfg)
    assert collapsed({"val_pgd_acc": 0.2, "val_fgsm_acc": 0.3}, 0.6, cfg)     # PGD fell below half its best
    assert collapsed({"val_pgd_acc": 0.02, "val_fgsm_acc": 0.5}, 0.03, cfg)   # FGSM-only robustness
    assert not collapsed({"val_pgd_acc": 0.01, "val_fgsm_acc": 0.1}, 0.05, cfg)  # never robust: noise


@pytest.mark.parametrize("study, metrics, files", [
    ("ood", ["val_auroc", "auroc/ae", "aupr_in/msp", "aupr_out/energy", "fpr95/odin", "ae_val_loss"],
     ["ood_curves.json"]),
    ("fgsm", ["acc_eps/0.1000", "adv_acc", "success_rate", "iter_success_rate", "mean_linf", "val_success_rate"],
     ["attack_curve.json", "figures/acc_vs_eps.png", "figures/fgsm_examples.png", "figures/iterative_examples.png"]),
    ("adv-train", ["val_robust_acc", "fgsm_acc", "pgd_acc", "pgd_acc_eps/0.1000", "auroc/msp", "catastrophic_overfit",
                   "val_pgd_acc"],
     ["robustness.json", "ood_curves.json", "figures/robust_acc_vs_eps.png"]),
    ("targeted", ["success_rate", "success_eps/0.1000", "success_from/0", "mean_linf", "val_success_rate"],
     ["targeted.json", "figures/targeted_budget.png", "figures/targeted_examples.png"]),
    ("classifier", ["val_acc", "test_acc", "ae_val_loss", "ae_test_loss"], []),
])
def test_each_task_reports_its_evaluation_once(study, metrics, files):
    """The training tasks report every epoch; a post-hoc task's trial probes a model (trained here
    when no shared one is given) and reports once, with the training's last epoch."""
    final, ctx = cached(study, 0)
    if study in ("adv-train", "classifier"):
        assert [r["epoch"] for r in ctx.reports] == [1, 2] and "test_acc" not in ctx.reports[0]
    else:
        assert [r["epoch"] for r in ctx.reports] == [2] and ctx.final_flags == [True]
    assert "test_acc" in final
    for name in metrics:
        assert name in final, name
    assert set(files) | {"config.json"} <= set(ctx.files)
    assert all(ctx.files[f][:4] == b"\x89PNG" for f in files if f.endswith(".png"))
    assert json.loads(ctx.files["config.json"])["task"] == {"classifier": "train"}.get(study, study)


@pytest.mark.parametrize("study", ["ood", "adv-train"])
def test_the_trial_figures_are_drawn_from_its_json_by_the_study(study):
    """The OOD figures come from the trial's ood_curves.json (the driver draws them when it logs the
    trial): every score's ROC / PR curves and its ID vs OOD histogram, whose densities integrate to 1."""
    _, ctx = cached(study, 0)
    files = {name: json.loads(data) for name, data in ctx.files.items() if name.endswith(".json")}
    curves = files["ood_curves.json"]
    assert set(curves["histograms"]) == set(curves["scores"]) and curves["dataset"] == "digits"
    for h in curves["histograms"].values():
        widths = torch.tensor(h["edges"], dtype=torch.float64).diff()
        for key in ("id", "ood"):
            assert float((torch.tensor(h[key], dtype=torch.float64) * widths).sum()) == pytest.approx(1.0, abs=1e-6)
    figs = get_study("lab4", study).trial_figures(files)
    assert set(figs) == {"ood_roc_pr.png", "ood_histograms.png"} and all(isinstance(f, Figure) for f in figs.values())
    assert len(figs["ood_roc_pr.png"].axes[0].lines) == len(curves["scores"]) + 1  # + the chance diagonal
    assert get_study("lab4", study).trial_figures({}) == {}


def test_a_retried_trial_resumes_from_its_last_epoch(tmp_path):
    cfg = tiny("adv-train", epochs=3, mix=0.5, epsilon=0.1)
    first = LocalContext(checkpoint_dir=tmp_path)
    train(from_dict(Lab4Config, {"epochs": 2}, base=cfg), first)  # "crashes" after 2 epochs
    state = first.restore()
    assert state["epoch"] == 1 and "best_model" in state
    final, again = run(cfg, LocalContext(checkpoint_dir=tmp_path))
    assert [r["epoch"] for r in again.reports] == [3] and "pgd_acc" in final


def _rows(study: str, n: int = 2) -> list[dict]:
    rows = []
    for i in range(n):
        final, ctx = cached(study, i)
        files = {k: json.loads(v) for k, v in ctx.files.items() if k.endswith(".json") and "/" not in k}
        rows.append({"trial_id": f"t{i}", "run_id": None, "params": {"epsilon": 0.05 * (i + 1), "target": i},
                     "metrics": final, "files": files})
    return rows


@pytest.mark.parametrize("study, compare", [("ood", lab4_plots.ood_compare), ("fgsm", lab4_plots.fgsm_compare),
                                            ("adv-train", lab4_plots.adv_train_compare),
                                            ("targeted", lab4_plots.targeted_compare)])
def test_parent_figures_draw_from_trial_rows(study, compare):
    assert compare([]) is None
    fig = compare(_rows(study))
    assert isinstance(fig, Figure)


def test_the_ood_comparison_shows_every_score_against_every_set_from_each_sets_selected_trial():
    """ood's cells are OOD sets: the parent figure's heat map has a column per set, each filled
    from the trial selected within that set on validation AUROC (never another set's trial)."""
    rows = _rows("ood")
    fake = [{**r, "trial_id": f"f{i}", "metrics": {**r["metrics"], "val_auroc": 0.5 + 0.1 * i},
             "files": {"ood_curves.json": {**r["files"]["ood_curves.json"], "ood_set": "fakedata",
                                           "scores": {k: {**v, "auroc": 0.6 + 0.01 * i}
                                                      for k, v in r["files"]["ood_curves.json"]["scores"].items()}}}}
            for i, r in enumerate(rows)]
    fig = lab4_plots.ood_compare([*rows, *fake])
    heat = fig.axes[0]
    assert [t.get_text() for t in heat.get_xticklabels()] == ["fakedata", "noise"]
    grid = np.asarray(heat.images[0].get_array())
    best = max(rows, key=lambda r: (r["metrics"]["val_auroc"], r["trial_id"] == "t0"))["files"]["ood_curves.json"]
    names = [t.get_text() for t in heat.get_yticklabels()]
    assert names == list(best["scores"]) and grid.shape == (len(names), 2)
    assert np.allclose(grid[:, 0], 0.61)  # fakedata: its second trial (higher val AUROC), not noise's
    assert np.allclose(grid[:, 1], [best["scores"][n]["auroc"] for n in names])
    assert len(fig.axes[1].get_legend().get_texts()) == 2  # one marker per set in the search panel


def test_the_ood_search_panel_shows_trials_that_were_never_tested():
    """Test once: only each set's selected trial has test curves; the search panel still shows every
    trial's validation AUROC at its sampled temperature (the heat map, the tested ones only)."""
    rows = _rows("ood")
    untested = {"trial_id": "u0", "run_id": None, "params": {"ood_set": "noise", "temperature": 10.0, "odin_eps": 0.001},
                "metrics": {"val_auroc": 0.7}, "files": {}}
    fig = lab4_plots.ood_compare([*rows, untested])
    drawn = sum(len(c.get_offsets()) for c in fig.axes[1].collections)
    assert drawn == len(rows) + 1
    assert lab4_plots.ood_compare([untested]) is None  # nothing tested: no heat map to draw


@pytest.mark.parametrize("study", ["ood", "fgsm", "adv-train", "targeted"])
def test_the_study_target_metric_is_in_every_report(study):
    # Tune rejects a result without the search metric, so it cannot wait for the final evaluation.
    _, ctx = cached(study, 0)
    metric = get_study("lab4", study).metric
    assert all(metric in r for r in ctx.reports)
