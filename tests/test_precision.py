"""Speed options of the training loop (bf16 autocast, channels_last, torch.compile): what a CPU can
check. On CPU the defaults must change nothing; the CUDA-only paths are checked with CPU stand-ins."""
from __future__ import annotations

import contextlib
import warnings

import pytest
import torch

import trainables.training as training
from trainables.config import ConfigError, from_dict
from trainables.context import LocalContext
from trainables.lab1.classifier import Lab1Config, train
from trainables.models import MLP, cnn
from trainables.training import Speed, autocast_context, compile_model

TINY = dict(model="cnn", dataset="digits", width=4, depth=1, num_stages=2, epochs=2, batch_size=64, max_train=256,
            val_fraction=0.15, crop_pad=1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _conv() -> torch.nn.Module:
    torch.manual_seed(0)
    return cnn(3, 10, 8, 1, True, (0.5,) * 3, (0.25,) * 3, 2)


def test_flags_default_on_parse_from_strings_and_reject_junk():
    assert (Lab1Config().amp, Lab1Config().channels_last, Lab1Config().compile) == (True, True, False)
    cfg = from_dict(Lab1Config, {"amp": "false", "channels_last": "0", "compile": "true"})  # as --set gives them
    assert (cfg.amp, cfg.channels_last, cfg.compile) == (False, False, True)
    with pytest.raises(ConfigError, match="amp"):
        from_dict(Lab1Config, {"amp": "maybe"})
    with pytest.raises(ConfigError, match="compile"):
        from_dict(Lab1Config, {"compile": "2"})


def test_speed_applies_on_cuda_only_and_channels_last_to_conv_nets_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)  # an Ampere+ GPU
    mlp = MLP((1, 8, 8), 10, 8, 1, False, (0.5,), (0.25,))
    assert Speed.for_model(_conv(), torch.device("cpu")) == Speed(amp=False, channels_last=False)
    assert Speed.for_model(_conv(), torch.device("cuda")) == Speed(amp=True, channels_last=True)
    assert Speed.for_model(mlp, torch.device("cuda")) == Speed(amp=True, channels_last=False)
    assert Speed.for_model(_conv(), torch.device("cuda"), amp=False, channels_last=False) == Speed()
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)  # a V100 / T4
    assert Speed.for_model(_conv(), torch.device("cuda")) == Speed(amp=False, channels_last=True)


def test_autocast_is_a_no_op_off_cuda():
    assert isinstance(autocast_context(torch.device("cpu"), True), contextlib.nullcontext)
    assert isinstance(autocast_context(torch.device("cuda"), False), contextlib.nullcontext)
    with warnings.catch_warnings():  # "CUDA is not available": the object is what we check
        warnings.simplefilter("ignore")
        ctx = autocast_context(torch.device("cuda"), True)
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16


def test_the_defaults_change_nothing_on_cpu():
    on, off = LocalContext(), LocalContext()
    train(Lab1Config(**TINY), on)
    train(Lab1Config(**TINY, amp=False, channels_last=False), off)
    assert on.reports == off.reports  # bit for bit


def test_channels_last_model_and_inputs_give_the_same_outputs():
    """What the CUDA default does to the model and its inputs, run on CPU (the format exists there)."""
    net = _conv().eval()
    x = torch.rand(4, 3, 8, 8)
    ref = net(x)
    speed = Speed(channels_last=True)
    out = speed.prepare(net)(speed.input(x))
    assert net.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert speed.input(x).is_contiguous(memory_format=torch.channels_last)
    assert speed.input(torch.rand(4, 10)).shape == (4, 10)  # non-image inputs pass through
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_the_loop_trains_and_evaluates_under_bf16_autocast(monkeypatch):
    """The amp path of train_one_epoch/evaluate/predict, with CPU bf16 autocast standing in for CUDA's:
    losses stay float32 and finite, accuracy accumulates, outputs are float32."""
    from trainables.data import load_image_data

    monkeypatch.setattr(training, "autocast_context",
                        lambda device, enabled: torch.autocast("cpu", dtype=torch.bfloat16) if enabled
                        else contextlib.nullcontext())
    data = load_image_data("synthetic", None, torch.device("cpu"))
    torch.manual_seed(0)
    net = cnn(3, 10, 8, 1, True, (0.5,) * 3, (0.25,) * 3, 2)
    opt = training.make_optimizer(net.parameters(), "adam", 3e-3, 0.0)
    sched = training.make_scheduler(opt, "constant", 1)
    speed = Speed(amp=True, channels_last=True)
    speed.prepare(net)
    losses = [training.train_one_epoch(net, opt, sched, data.train, batch_size=64, seed=0, epoch=e, speed=speed)[0]
              for e in range(3)]
    val_loss, val_acc = training.evaluate(net, data.val, speed=speed)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert torch.isfinite(torch.tensor(val_loss)) and 0.0 <= val_acc <= 1.0
    assert training.predict(net, data.val.x[:5], speed=speed).dtype == torch.float32


def test_compile_flag_compiles_the_trained_net_once(monkeypatch):
    compiled, modes = [], []
    monkeypatch.setattr(torch, "compile", lambda net, **kwargs: compiled.append(net) or modes.append(kwargs) or net)
    train(Lab1Config(**{**TINY, "epochs": 1}, compile=True), LocalContext())
    assert len(compiled) == 1 and isinstance(compiled[0], torch.nn.Module)
    assert modes == [{"mode": None}]  # CUDA graphs only on one CUDA device
    compile_model(compiled[0], True, cuda_graphs=True)
    assert modes[-1] == {"mode": "reduce-overhead"}
    compiled.clear()
    train(Lab1Config(**{**TINY, "epochs": 1}), LocalContext())
    assert compiled == []


@pytest.mark.slow
def test_torch_compile_gives_the_same_outputs_on_cpu():
    """torch.compile for real (~1 min on a busy 2-core CPU: inductor builds C++ kernels)."""
    net = _conv().eval()
    x = torch.rand(8, 3, 8, 8)
    try:
        out = compile_model(net, True)(x)
    except Exception as e:  # no C++ toolchain here: say so instead of passing silently
        pytest.skip(f"torch.compile does not work on this machine: {type(e).__name__}: {str(e)[:200]}")
    torch.testing.assert_close(out, net(x), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- Lab 4 adopts the same options
LAB4_TINY = dict(task="adv-train", dataset="digits", model="cnn", width=4, num_stages=2, epochs=2, batch_size=64,
                 max_train=256, epsilon=0.1, eval_eps=0.1, eps_grid=(0.0, 0.1), pgd_steps=2, max_eval=64,
                 co_batch=64, ood_set="noise")


def test_lab4_defaults_change_nothing_on_cpu():
    from trainables.lab4.robustness import Lab4Config, train as train4

    cfg = Lab4Config(**LAB4_TINY)
    assert (cfg.amp, cfg.channels_last, cfg.compile) == (True, True, False)
    on, off = LocalContext(), LocalContext()
    train4(cfg, on)
    train4(Lab4Config(**LAB4_TINY, amp=False, channels_last=False), off)
    assert on.reports == off.reports  # bit for bit


def test_lab4_trains_under_autocast_while_its_attacks_stay_fp32(monkeypatch):
    """Lab 4 with the CUDA speed options forced on, CPU bf16 autocast standing in for CUDA's: the
    training steps run under autocast on a channels_last model, the FGSM-RS examples mixed into
    each batch are made outside it (float32 gradients w.r.t. the input)."""
    import trainables.lab4.robustness as lab4

    autocasts = []

    def cpu_autocast(device, enabled):
        autocasts.append(enabled)
        return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()

    monkeypatch.setattr(training, "autocast_context", cpu_autocast)
    monkeypatch.setattr(lab4.Speed, "for_model", classmethod(lambda cls, *a, **k: cls(amp=True, channels_last=True)))
    seen = []
    fgsm_rs = lab4.fgsm_rs

    def watched(model, x, *args, **kwargs):
        out = fgsm_rs(model, x, *args, **kwargs)
        seen.append((torch.is_autocast_enabled("cpu"), out.dtype))
        return out

    monkeypatch.setattr(lab4, "fgsm_rs", watched)
    ctx = LocalContext()
    metrics = lab4.train(lab4.Lab4Config(**LAB4_TINY), ctx)
    assert seen and all(s == (False, torch.float32) for s in seen)
    assert autocasts.count(True) >= 2 * 4  # every training step of both epochs (256 images / 64)
    conv = next(v for k, v in ctx.last_state["model"].items() if v.ndim == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in ctx.reports)
    assert 0.0 <= metrics["test_acc"] <= 1.0 and "val_robust_acc" in metrics
