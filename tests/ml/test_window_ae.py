"""The windowing autoencoder: bounded affine, decoder, the softmax latent (every channel gets a
gradient; two live channels on a two-domain image), training on a two-domain image (mIoU and
variant orientations against the truth), saved models re-used on new frames, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # two threads on a busy 2-core machine were 6x slower (OpenMP spinning)

from distill4d import Distill4dError
from distill4d.ml.window_ae.model import WindowAE, WindowAEConfig, window_ae_loss
from distill4d.ml.window_ae.segment import load_window_ae
from distill4d.ml.window_ae.train import WindowAETrainConfig
from distill4d.segment import mean_iou, segment
from distill4d.simulate.domains import simulate_domains

FAST = WindowAETrainConfig(max_steps=400, seed=0)


def test_latent_is_bounded_and_the_decoder_warps_templates():
    torch.manual_seed(0)
    m = WindowAE(WindowAEConfig(size=32, channels=3, max_rotation_deg=15)).eval()
    with torch.no_grad():
        m.to_affine.bias.copy_(torch.tensor([50.0, -50.0, 0.0, 0.0]))  # saturate tanh
        out = m(torch.rand(5, 32, 32))
    assert out["channels"].shape == (5, 3) and bool((out["channels"] >= 0).all())
    assert torch.allclose(out["scale"], torch.full((5,), 1.1)) and torch.allclose(out["rotation_deg"], torch.full((5,), -15.0))
    # identity affine: the reconstruction is the channels' weighted templates plus the background
    z = torch.tensor([[2.0, 0.0, 0.0]])
    rec = m.decode(z, torch.ones(1), torch.zeros(1), torch.zeros(1, 2))[0]
    want = 2 * torch.nn.functional.softplus(m.templates[0]) + torch.nn.functional.softplus(m.background)
    assert torch.allclose(rec, want, atol=1e-5)
    # a 90° rotation about the grid centre (15.5 px) moves row 4 of the middle column to column 4 or 27
    with torch.no_grad():
        m.templates.zero_()
        m.templates[0, 4, 16] = 30.0
    r90 = m.decode(torch.tensor([[1.0, 0, 0]]), torch.ones(1), torch.tensor([90.0]), torch.zeros(1, 2))[0]
    peak = np.unravel_index(int(r90.argmax()), r90.shape)
    assert abs(peak[0] - 15.5) == 0.5 and abs(peak[1] - 15.5) == 11.5
    loss = window_ae_loss(torch.zeros(5, 32, 32), out, l1_coef=0.5)
    assert float(loss["total"]) == pytest.approx(float(loss["mse"] + 0.5 * loss["l1"]))


def test_rotation_bound_zero_switches_the_rotation_off():
    torch.manual_seed(0)
    m = WindowAE(WindowAEConfig(size=32, channels=2, max_rotation_deg=0)).eval()
    with torch.no_grad():
        m.to_affine.bias.copy_(torch.tensor([0.0, 50.0, 0.0, 0.0]))  # the rotation's tanh saturated
        out = m(torch.rand(4, 32, 32))
    assert torch.equal(out["rotation_deg"], torch.zeros(4))
    with pytest.raises(Distill4dError, match="max_rotation_deg"):
        WindowAEConfig(max_rotation_deg=91)


def test_channel_usage_counts_dead_channels():
    from distill4d.ml.window_ae.train import channel_usage

    u = channel_usage(np.array([[0.0, 1.0, 0.0], [0.0, 0.5, 0.2], [0.0, 0.0, 0.0]]))
    assert u["alive"] == 2 and u["wins"] == pytest.approx([0.0, 2 / 3, 0.0])
    assert u["active"] == pytest.approx([0.0, 2 / 3, 1 / 3])


@pytest.mark.slow
def test_two_domains_separated_and_orientations_recovered(tmp_path):
    torch.set_num_threads(2)
    d = simulate_domains((192, 192), angles_deg=(25, 115), periods_px=7, dose=40, seed=11)
    s = segment(d.images, "autoencoder", domains=2, window_px=32, step_px=8, train=FAST, save_model=tmp_path / "m.pt")
    # measured 0.967 with the softmax latent and the peaks start (0.922 with 8 ReLU channels and the
    # k-means start; k-means 0.927, NMF 0.925); a failure to separate gives about 0.33
    assert mean_iou(s.labels, d.labels) > 0.88
    assert np.allclose(np.sort(s.variant_angles_deg), [25, 115], atol=3)
    assert np.abs(np.sort(s.fractions[0]) - np.sort(d.fractions[0])).max() < 0.08
    assert s.rotation_deg.shape == s.labels_windows.shape and np.all(np.abs(s.rotation_deg) <= 20)
    assert np.all(np.abs(s.scale - 1) <= 0.1 + 1e-6)
    # the saved model is re-used on a new frame without training, with the training's clip level
    card = json.loads((tmp_path / "m.json").read_text())
    assert card["format"] == "distill4d-window-ae-1" and card["features"]["window_px"] == 32
    new = simulate_domains((192, 192), angles_deg=(25, 115), periods_px=7, dose=40, fraction_range=(0.3, 0.3), seed=12)
    again = segment(new.images, "autoencoder", domains=2, window_px=32, step_px=8, model=tmp_path / "m.pt")
    assert again.timings_s["train"] == 0.0 and again.model_path == str(tmp_path / "m.pt")
    assert mean_iou(again.labels, new.labels) > 0.85
    model, card = load_window_ae(tmp_path / "m.pt")
    assert model.feature_clip == pytest.approx(s.parameters["clip"])
    with pytest.raises(Distill4dError, match="window_px=32"):
        segment(new.images, "autoencoder", window_px=64, step_px=16, model=tmp_path / "m.pt")


@pytest.mark.slow
def test_a_c_lattice_variants_kept_in_different_channels():
    from distill4d.simulate.domains import ninety_degree_rotation_deg

    ca = 1.04  # the two a/c variants: the same near-square lattice, turned by 2 atan(c/a) = 92.3°
    d = simulate_domains((192, 192), kind="lattice", tetragonality=ca, periods_px=6, dose=40, seed=11,
                         angles_deg=(20, 20 + ninety_degree_rotation_deg(ca)))
    s = segment(d.images, "autoencoder", domains=2, window_px=32, step_px=8, train=FAST)
    # measured 0.963 with the softmax latent and the peaks start (0.859 with 8 ReLU channels and the
    # k-means start; k-means 0.923); one variant lost gives about 0.33, no live channel 0
    assert mean_iou(s.labels, d.labels) > 0.8
    assert s.n_variants == 2 and set(s.variant_of_channel[s.variant_of_channel >= 0]) == {0, 1}


def test_bad_configs():
    with pytest.raises(Distill4dError, match="size"):
        WindowAEConfig(size=48)
    with pytest.raises(Distill4dError, match="max_rotation_deg"):
        WindowAEConfig(max_rotation_deg=-1)
    with pytest.raises(Distill4dError, match="max_steps"):
        WindowAETrainConfig(max_steps=0)
    with pytest.raises(Distill4dError, match="at least 32 windows"):
        segment(np.random.default_rng(0).random((64, 64)), "autoencoder", window_px=32, step_px=16)


def test_softmax_latent_gives_every_channel_a_gradient_at_initialisation():
    torch.manual_seed(0)
    m = WindowAE(WindowAEConfig(size=32, channels=4, latent="softmax"))
    m.tau.fill_(0.1)
    with torch.no_grad():  # distinct templates, as after the start from cluster means (equal templates
        # make the loss depend on the channels' sum only: zero gradient to the shares, up to rounding)
        m.templates.copy_(torch.randn(4, 32, 32) - 2)
    x = torch.rand(8, 32, 32)
    out = m(x)
    ch = out["channels"]
    # amplitude (softplus > 0) x softmax: every channel > 0 on every window, shares sum to 1
    assert bool((ch > 0).all())
    shares = ch / ch.sum(1, keepdim=True)
    assert torch.allclose(shares.sum(1), torch.ones(8))
    window_ae_loss(x, out)["total"].backward()
    # every row of the channel head has a gradient (a ReLU channel off on every window has none)
    assert bool((m.to_channels.weight.grad.abs().sum(1) > 0).all())
    with pytest.raises(Distill4dError, match="latent"):
        WindowAEConfig(latent="sigmoid")


def test_tau_schedule_and_init_options():
    t = WindowAETrainConfig(tau_start=1.0, tau_end=0.1, tau_steps=100)
    assert t.tau_at(0) == pytest.approx(1.0) and t.tau_at(50) == pytest.approx(0.1**0.5)
    assert t.tau_at(100) == t.tau_at(10_000) == pytest.approx(0.1)
    with pytest.raises(Distill4dError, match="tau_end"):
        WindowAETrainConfig(tau_end=0)
    with pytest.raises(Distill4dError, match="init"):
        WindowAETrainConfig(init="random")
    with pytest.raises(Distill4dError, match="anchor_coef"):
        WindowAETrainConfig(anchor_coef=-0.1)


def test_init_shares_are_checked():
    from distill4d.ml.window_ae.train import train_window_ae

    x = np.random.default_rng(0).random((40, 32, 32)).astype(np.float32)
    cfg = WindowAEConfig(size=32, channels=2)
    with pytest.raises(Distill4dError, match=r"init_shares must be \(40, 2\)"):
        train_window_ae(x, cfg, FAST, init_shares=np.ones((40, 3)))
    with pytest.raises(Distill4dError, match="init_shares"):
        train_window_ae(x, cfg, FAST, init_shares=-np.ones((40, 2)))


@pytest.mark.slow
def test_softmax_latent_keeps_two_channels_and_separates_two_domains():
    from distill4d.ml.window_ae.train import train_window_ae
    from distill4d.segment import window_features

    torch.set_num_threads(1)
    d = simulate_domains((192, 192), angles_deg=(25, 115), periods_px=7, dose=40, seed=11)
    f = window_features(d.images, 32, 8)
    train = WindowAETrainConfig(max_steps=400, seed=0, l1_coef=0.0)
    cfg = WindowAEConfig(size=f.feature_px, channels=2, latent="softmax")
    model, history, info = train_window_ae(f.flat(), cfg, train)
    assert float(model.tau) == pytest.approx(train.tau_at(info["best_step"] - 1))  # saved with the weights
    s = segment(None, "autoencoder", domains=2, features=f, model=model, channels=2)
    ch = s.channels.reshape(-1, 2)
    wins = np.bincount(ch.argmax(1), minlength=2) / len(ch)
    assert wins.min() > 0.2  # both channels live, each winning a domain
    # measured 0.968 (seed 11, 400 steps, 1 thread, k-means start; the ReLU latent with 8 channels
    # 0.926); one variant lost gives about 0.33
    assert mean_iou(s.labels, d.labels) > 0.9


def test_a_card_without_latent_loads_as_relu(tmp_path):
    from types import SimpleNamespace

    from distill4d.ml.window_ae.segment import save_window_ae

    torch.manual_seed(0)
    m = WindowAE(WindowAEConfig(size=32, channels=2, latent="relu"))
    feats = SimpleNamespace(window_px=64, step_px=16, feature_px=32, taper="hann", clip=1.5)
    save_window_ae(tmp_path / "old.pt", m, feats)
    card = json.loads((tmp_path / "old.json").read_text())
    del card["config"]["latent"]  # as written before the softmax latent
    (tmp_path / "old.json").write_text(json.dumps(card))
    loaded, _ = load_window_ae(tmp_path / "old.pt")
    assert loaded.config.latent == "relu" and not hasattr(loaded, "tau")
    x = torch.rand(3, 32, 32)
    assert torch.allclose(loaded.eval()(x)["channels"], m.eval()(x)["channels"])


@pytest.mark.slow
def test_anchor_keeps_each_window_near_its_unmixing_mixture():
    from distill4d.ml.window_ae.model import WindowAEConfig
    from distill4d.ml.window_ae.segment import _peaks_start, encode_windows
    from distill4d.ml.window_ae.train import train_window_ae
    from distill4d.segment import window_features

    d = simulate_domains((256, 256), angles_deg=(10, 70, 130), periods_px=7, dose=30, seed=21)
    f = window_features(d.images, 32, 8)
    act = _peaks_start(f, 3, 0)
    target = act / act.sum(1, keepdims=True)
    model, _, _ = train_window_ae(f.flat(), WindowAEConfig(size=f.feature_px, channels=3), FAST, init_shares=act + 1e-6)
    ch = encode_windows(model, f.flat())["channels"]
    shares = ch / ch.sum(1, keepdims=True)
    # total-variation distance between each window's shares and its unmixing mixture: measured 0.058
    # anchored (anchor_coef 0.01, 400 steps, 1 thread), 0.103 with the anchor off (one-hot warm-up)
    assert float((np.abs(shares - target).sum(1) / 2).mean()) < 0.08


def test_a_collapsed_latent_is_trained_again_with_the_next_seed(monkeypatch):
    """_lost_channels flags a channel that won 50 % of the windows at the `peaks` start and none
    after training; run_window_ae then trains again with the next seed (at most MAX_RESTARTS times)
    and records it."""
    from distill4d.ml.window_ae import segment as wseg
    from distill4d.segment import window_features

    shares = np.zeros((40, 2), np.float32)
    shares[:20, 0] = shares[20:, 1] = 1.0
    collapsed = np.tile([[0.1, 0.9]], (40, 1)).astype(np.float32)
    kept = shares.copy()
    assert wseg._lost_channels(collapsed, shares) == [0]
    assert wseg._lost_channels(kept, shares) == []

    # the restart loop: every training collapses -> 1 + MAX_RESTARTS trainings, seeds 0, 1, 2
    d = simulate_domains((96, 96), angles_deg=(0, 90), periods_px=6, dose=30, seed=1)
    feats = window_features(d.images, 32, 8)
    seeds = []
    monkeypatch.setattr(wseg, "_lost_channels", lambda *a: [0])
    import dataclasses

    import distill4d.ml.window_ae.train as wtrain

    real_train = wtrain.train_window_ae

    def spy(flat, cfg, tcfg, **kw):
        seeds.append(tcfg.seed)
        return real_train(flat, cfg, dataclasses.replace(tcfg, max_steps=2, eval_every=1), **kw)

    monkeypatch.setattr(wtrain, "train_window_ae", spy)
    out = wseg.run_window_ae(feats, channels=2, seed=0)
    assert seeds == [0, 1, 2] == list(range(wseg.MAX_RESTARTS + 1))
    assert [r["seed"] for r in out["info"]["restarts"]] == [0, 1] and out["info"]["seed"] == 2
