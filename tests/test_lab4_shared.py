"""Train once, probe many (trainables/lab4/shared.py): a post-hoc trial (ood, fgsm, targeted) that
probes a shared model gives bit for bit what the old train-then-probe trial gave with the same seed;
one training serves every trial of a study, also when they ask at the same time; a training killed
mid-way resumes; a model that does not fit the study is refused in one line. Tiny configs, no Ray."""
from __future__ import annotations

import json
import math
import threading
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from orchestrator.sources import resolve_source
from orchestrator.studies import get_study
from trainables.config import from_dict
from trainables.context import LocalContext
from trainables.lab4 import evaluation, robustness, shared
from trainables.lab4.robustness import Lab4Config, build, final_evaluation, run_epoch, train
from trainables.recipe import load_data
from trainables.training import weights_digest

TINY = {"model": "cnn", "width": 8, "depth": 1, "num_stages": 2, "epochs": 2, "eps_grid": (0.0, 0.1),
        "attack_steps": 5, "attack_step": 0.05, "max_eval": 64}
KNOBS = {"ood": {"temperature": 10.0, "odin_eps": 0.002}, "fgsm": {"epsilon": 0.05}, "targeted": {"target": 3}}


def tiny(study: str, **overrides) -> Lab4Config:
    return from_dict(Lab4Config, {**get_study("lab4", study).base_config("quick"), **TINY, **overrides})


def old_train_then_probe(cfg: Lab4Config) -> dict[str, float]:
    """What a post-hoc trial did before it probed a shared model: train in the trial (every epoch
    through the same steps), then evaluate the last epoch's weights."""
    torch.manual_seed(cfg.seed)
    ctx = LocalContext()
    data = load_data(cfg, ctx)
    m, net = build(cfg, ctx, data)
    ood = evaluation.load_ood(cfg, ctx, data) if cfg.task == "ood" else None
    metrics: dict[str, float] = {}
    for epoch in range(cfg.epochs):
        metrics = run_epoch(cfg, ctx, m, net, data, epoch)
        if cfg.task == "ood":
            metrics.update(evaluation.val_auroc(cfg, m.model, m.ae, data, ood))
    final, _ = final_evaluation(cfg, m.model, m.ae, data, ood)
    return {**metrics, **final, "weights_digest": weights_digest(m.model)}


def same(a: dict[str, float], b: dict[str, float], keys) -> bool:
    return all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in keys)


@pytest.mark.parametrize("task", ["ood", "fgsm", "targeted"])
def test_a_probe_of_the_shared_model_is_bit_for_bit_the_old_trial(task, tmp_path, one_torch_thread):
    cfg = tiny(task, **KNOBS[task])
    old = old_train_then_probe(cfg)
    here = train(cfg, LocalContext())                                           # no shared folder
    other = replace(cfg, **({"temperature": 1000.0} if task == "ood" else {"epsilon": 0.2, "target": 5}))
    first = train(replace(other, source_cache=str(tmp_path)), LocalContext())   # trains and saves it
    ctx = LocalContext()
    probed = train(replace(cfg, source_cache=str(tmp_path)), ctx)              # loads it
    assert set(old) <= set(here) and same(old, here, old) and same(old, probed, old)
    assert first["weights_digest"] == probed["weights_digest"]
    note = json.loads(ctx.files["probed_model.json"])
    assert not note["trained_here"] and note["model"] == str(tmp_path / f"model-{shared.digest(cfg)}.pt")
    assert ctx.last_state is None  # only the trial that trained the model checkpoints it
    assert [p.name for p in tmp_path.glob("*.partial")] == []  # the finished training left no partial file


def test_the_search_target_depends_on_the_searched_knob(one_torch_thread, tmp_path):
    """fgsm's val_success_rate moves with eps, targeted's with the target class, on one model."""
    fgsm = [train(tiny("fgsm", epsilon=e, source_cache=str(tmp_path)), LocalContext())["val_success_rate"]
            for e in (0.0, 0.2)]
    assert fgsm[0] == 0.0 < fgsm[1]
    targets = {t: train(tiny("targeted", target=t, epsilon=0.1, source_cache=str(tmp_path)),
                        LocalContext())["val_success_rate"] for t in range(4)}
    assert len(set(targets.values())) > 1, targets


def test_one_training_serves_trials_that_ask_at_the_same_time(tmp_path, monkeypatch):
    """Four trials of one study with different knobs start together: one trains, three wait on the
    folder's lock and load the same weights."""
    calls = []
    fit = robustness.fit_model

    def counting(*args, **kwargs):
        calls.append(1)
        return fit(*args, **kwargs)

    monkeypatch.setattr(robustness, "fit_model", counting)
    results: dict[float, tuple[dict, LocalContext]] = {}

    def trial(eps: float) -> None:
        ctx = LocalContext()
        results[eps] = train(tiny("fgsm", epsilon=eps, source_cache=str(tmp_path)), ctx), ctx

    threads = [threading.Thread(target=trial, args=(e,)) for e in (0.02, 0.05, 0.1, 0.2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert len(results) == 4 and len(calls) == 1
    assert len({m["weights_digest"] for m, _ in results.values()}) == 1
    trained = [json.loads(ctx.files["probed_model.json"])["trained_here"] for _, ctx in results.values()]
    assert sorted(trained) == [False, False, False, True]


def test_a_training_killed_mid_way_resumes_from_its_last_epoch(tmp_path, monkeypatch, one_torch_thread):
    cfg = tiny("fgsm", epochs=3)
    reference = train(cfg, LocalContext())
    epochs_run = []
    real = robustness.run_epoch

    def dies_in_epoch_3(cfg_, ctx, m, net, data, epoch):
        if epoch == 2 and not epochs_run.count("died"):
            epochs_run.append("died")
            raise KeyboardInterrupt  # stands for a SIGKILL of the trial
        epochs_run.append(epoch)
        return real(cfg_, ctx, m, net, data, epoch)

    monkeypatch.setattr(robustness, "run_epoch", dies_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train(replace(cfg, source_cache=str(tmp_path)), LocalContext())
    assert list(tmp_path.glob("*.partial")) and not list(tmp_path.glob("*.pt"))
    again = train(replace(cfg, source_cache=str(tmp_path)), LocalContext())
    assert epochs_run == [0, 1, "died", 2]  # the retry ran only the third epoch
    assert same(reference, again, reference)


def test_a_given_model_is_probed_and_a_repeat_with_another_seed_gets_its_own(tmp_path, one_torch_thread):
    given = tmp_path / "given" / "model.pt"
    cfg = tiny("fgsm", epsilon=0.1)
    train(replace(cfg, source_cache=str(tmp_path / "made")), LocalContext())
    given.parent.mkdir()
    (tmp_path / "made" / f"model-{shared.digest(cfg)}.pt").rename(given)
    ctx = LocalContext()
    probed = train(replace(cfg, source_checkpoint=str(given), source_run="abc123"), ctx)
    assert json.loads(ctx.files["probed_model.json"])["model"] == "abc123"
    assert probed["weights_digest"] == train(cfg, LocalContext())["weights_digest"]
    ctx = LocalContext()
    repeat = train(replace(cfg, seed=1, source_checkpoint=str(given), source_run="abc123"), ctx)
    note = json.loads(ctx.files["probed_model.json"])
    assert note["trained_here"] and Path(note["model"]).parent == given.parent
    assert repeat["weights_digest"] != probed["weights_digest"]


@pytest.mark.parametrize("change, reason", [
    ({"dataset": "synthetic"}, "dataset=digits"),
    ({"classes": (0, 1, 2)}, "classes"),
    ({"width": 16}, "width=8"),
    ({"model": "mlp"}, "model=cnn"),
    ({"seed": 4}, "seed=0"),
])
def test_a_model_that_does_not_fit_is_refused_in_one_line(change, reason, tmp_path, one_torch_thread):
    cfg = tiny("fgsm")
    train(replace(cfg, source_cache=str(tmp_path)), LocalContext())
    path = str(tmp_path / f"model-{shared.digest(cfg)}.pt")
    study = get_study("lab4", "fgsm")
    base = {**asdict(cfg), **change, "source_checkpoint": path}

    class NoLookup:
        workdir = tmp_path

    with pytest.raises(ValueError) as e:
        resolve_source(study, base, NoLookup())
    assert reason in str(e.value) and "\n" not in str(e.value)
    assert resolve_source(study, {**asdict(cfg), "source_checkpoint": path}, NoLookup())["source_checkpoint"] == path


def test_ood_refuses_a_model_without_an_autoencoder(tmp_path, one_torch_thread):
    cfg = tiny("fgsm")
    train(replace(cfg, source_cache=str(tmp_path)), LocalContext())
    saved, ckpt = robustness.load_probed(str(tmp_path / f"model-{shared.digest(cfg)}.pt"))
    reason = robustness.probed_conflict(saved, ckpt, {**asdict(cfg), "task": "ood"})
    assert reason is not None and "autoencoder" in reason


def test_the_classifier_study_trains_a_model_every_post_hoc_task_can_probe(tmp_path, one_torch_thread):
    """Its checkpoint (the tracker's model.pt: model, autoencoder, config) fits ood, fgsm and targeted."""
    ctx = LocalContext()
    train(tiny("classifier"), ctx)
    path = tmp_path / "model.pt"
    torch.save({k: ctx.last_state[k] for k in ("model", "ae", "config")}, path)
    saved, ckpt = robustness.load_probed(str(path))
    for task in ("ood", "fgsm", "targeted"):
        assert robustness.probed_conflict(saved, ckpt, asdict(tiny(task))) is None, task
    metrics = train(tiny("ood", source_checkpoint=str(path)), LocalContext())
    assert metrics["weights_digest"] == weights_digest(_classifier(saved, ckpt))


def _classifier(saved: Lab4Config, ckpt: dict) -> torch.nn.Module:
    data = load_data(saved, LocalContext())
    model = robustness.build_classifier(saved, data)
    model.load_state_dict(ckpt["model"])
    return model
