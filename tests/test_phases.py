"""The step as phases: a term added to a phase reaches its own network with its own weight, whatever the
schedule shares, in one process and in a data-parallel run; the phases module stays free of scheduling."""

import copy
import re
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
from conftest import tiny_cfg

from usis.losses import (
    d_logistic_loss,
    g_nonsaturating_loss,
    hard_labels,
    l1_reconstruction,
    pseudo_label_ce,
    r1_penalty,
    segmentation_loss,
)
from usis.nn import one_hot_labels
from usis.train.distributed import Dist, launch
from usis.train.phases import USISPhases
from usis.train.trainer import Trainer

L2_WEIGHT = 0.05  # the made-up term: a small L2 on S's logits of G's images, added to S's phase
# spectral norm off in G and S: the written objective below runs S on the fakes more often than the schedule
# does (that is what sharing saves), and a spectral norm's power iteration would count each forward
CASES = {
    "seg and D forward shared": ["train.lambda_seg=2.5"],  # S's seg term through G's backward, weights 2.5 : 1
    "nothing of S shared": ["train.lambda_seg=0"],
    # a D with two heads (model.d_patch): the image's logit and one per patch, each its own adversarial term, the
    # patch head's weighted (train.lambda_d_patch; at 1 the plain sum, pinned in test_networks)
    "a second D scale": ["train.lambda_seg=2.5", "model.d_patch=true", "train.lambda_d_patch=0.3"],
    # model.d_reads: D judges every image beside S's one-hot reading of it, made by S as the step found it (the
    # photos' in D's phase too, after S's backward), with no gradient to S or to the images through it. The
    # decoder's L1 off here: its sign flips where the schedule's order of float sums moves a pixel across it (seen
    # at seed 7's second step, 4e-3 of the decoder's gradient; without it D's gradient is bit for bit the written one)
    "D reads S's reading": ["train.lambda_seg=2.5", "model.d_reads=true", "train.lambda_rec=0"],
    # data.labelled: S's own term on labelled photos, G's L1 to them (the views off: deterministic)
    # train.lambda_s_pseudo: S also learns the unpaired photos from its own confident reading (a low threshold:
    # the tiny S at its start reads some pixels confidently)
    "S self-training": ["train.lambda_seg=2.5", "train.lambda_s_pseudo=0.6", "train.s_pseudo_threshold=0.15"],
    "labelled pairs": ["train.lambda_seg=2.5", "data.labelled=6", "train.lambda_labelled=0.7",
                       "train.lambda_labelled_rec=1.5", "train.labelled_augment="],
}


def add_a_g_term_built_on_the_shared_one(monkeypatch):
    """G also minimises seg**2 / 2: a term of G's that depends on S's parameters through the shared seg term
    without being it. The schedule must then not take S's gradient from G's backward."""
    original = USISPhases.generator

    def generator(self, m, labels, photos, pairs=None):
        fake, loss = original(self, m, labels, photos, pairs)
        loss.terms["seg_sq"] = (0.5, self.seg(fake, labels) ** 2)
        return fake, loss

    monkeypatch.setattr(USISPhases, "generator", generator)


def add_l2_to_the_segmenter_phase(monkeypatch=None):
    """Adding a term is a few lines: S's phase returns it with its weight; the schedule does the rest."""
    original = USISPhases.segmenter

    def segmenter(self, fake, labels, pairs=None, photos=None):
        loss = original(self, fake, labels, pairs, photos)
        loss.terms["l2"] = (L2_WEIGHT, self.nets.S(fake).float().pow(2).mean())
        return loss

    if monkeypatch is not None:
        monkeypatch.setattr(USISPhases, "segmenter", segmenter)
    else:
        USISPhases.segmenter = segmenter


def written_gradients(nets, cfg, labels, photos, it, with_l2=True, seg_sq=False, d_view=None, s_view=None,
                      pairs=None):
    """Each network's gradient of its objective as written, by plain autograd on copies of the networks: no
    shared forward or term, no overlap, no schedule. The caller seeds the RNG as before the step. ``d_view`` and
    ``s_view``: how D and S see images (``train.d_augment``, ``train.s_augment``; deterministic stand-ins).
    ``pairs``: labelled photos and their maps (``data.labelled``, without ``train.labelled_augment``)."""
    d_view = d_view or (lambda x: x)
    s_view = s_view or (lambda x: x)
    t, dontcare = cfg.train, 0
    G, S, D, dec = nets.G, nets.S, nets.D, nets.decoder
    for net in (G, S, D, dec):
        net.requires_grad_(True)
    m = one_hot_labels(labels, cfg.model.num_classes)
    fake = G(m)
    rec = 0
    if pairs is not None:
        rec = t.lambda_labelled_rec * l1_reconstruction(G(one_hot_labels(pairs[1], cfg.model.num_classes)), pairs[0])

    def seg(images):
        return segmentation_loss(t.seg_loss, S(s_view(images)).float(), labels, dontcare,
                                 cfg.model.s_extra_channel)

    def judge(x, **kw):  # D, beside S's reading of x with model.d_reads
        if not cfg.model.d_reads:
            return D(x, **kw)
        with torch.no_grad():
            read = hard_labels(S(x).float(), cfg.model.s_extra_channel)
        return D(x, read, **kw)

    seg_fake = seg(fake)
    w = (1.0, t.lambda_d_patch) if cfg.model.d_patch else None  # D's heads' weights
    loss_g = t.lambda_seg * seg_fake + g_nonsaturating_loss(judge(d_view(fake)), w) + (0.5 * seg_fake ** 2 if seg_sq else 0)
    loss_g = loss_g + rec
    f = fake.detach()
    loss_s = seg(f) + (L2_WEIGHT * S(f).float().pow(2).mean() if with_l2 else 0)
    if t.lambda_s_pseudo > 0:
        loss_s = loss_s + t.lambda_s_pseudo * pseudo_label_ce(S(photos).float(), t.s_pseudo_threshold, dontcare,
                                                              cfg.model.s_extra_channel)
    if pairs is not None:
        loss_s = loss_s + t.lambda_labelled * segmentation_loss(t.seg_loss, S(pairs[0]).float(), pairs[1], dontcare,
                                                                cfg.model.s_extra_channel)
    r1 = t.r1_every > 0 and it % t.r1_every == 0
    real = photos.detach().requires_grad_(r1)
    seen = d_view(real)
    real_logits, feats = judge(seen, return_features=True)
    loss_d = d_logistic_loss(real_logits, judge(d_view(f)), w) + t.lambda_rec * l1_reconstruction(dec(feats), seen)
    if r1:  # the synthetic preset's fused R1: gamma / 2 * R1, weighted by the interval
        loss_d = loss_d + t.r1_gamma / 2 * r1_penalty(real_logits, real, w) * t.r1_every
    grads = {}
    for name, loss, params in (("G", loss_g, list(G.parameters())), ("S", loss_s, list(S.parameters())),
                               ("D", loss_d, list(D.parameters()) + list(dec.parameters()))):
        grads[name] = list(torch.autograd.grad(loss, params, retain_graph=True))
    return grads


def record_gradients(trainer):
    """The gradients each optimizer steps on, as it steps."""
    seen = {}
    for name, opt in (("G", trainer.opt_g), ("S", trainer.opt_s), ("D", trainer.opt_d)):
        def step(*a, _real=opt.step, _name=name, _opt=opt, **k):
            seen[_name] = [p.grad.clone() for group in _opt.param_groups for p in group["params"]]
            return _real(*a, **k)
        opt.step = step
    return seen


def steps_against_the_written_objective(trainer, cfg, steps, seed, average=lambda grads: grads, seg_sq=False,
                                        **views):
    """Run ``steps`` steps; before each, the gradients of the written objective on copies of the networks with
    the same noise. Returns [(gradients stepped on, written gradients, written without the L2 term)]."""
    out = []
    seen = record_gradients(trainer)
    for _ in range(steps):
        labels = trainer.loaders.next_labels()["label"]
        photos = trainer.loaders.next_photos()["image"]
        batch = trainer.loaders.next_pairs()
        pairs = None if batch is None else (batch["image"], batch["label"])
        nets = copy.deepcopy(trainer.nets)
        it = trainer.step
        torch.manual_seed(seed + it)
        want = average(written_gradients(nets, cfg, labels, photos, it, seg_sq=seg_sq, pairs=pairs, **views))
        torch.manual_seed(seed + it)
        without = average(written_gradients(copy.deepcopy(trainer.nets), cfg, labels, photos, it, with_l2=False,
                                            seg_sq=seg_sq, pairs=pairs, **views))
        torch.manual_seed(seed + it)
        trainer.train_step(labels, photos, pairs)
        trainer.finish_pending_updates()  # a data-parallel run finishes D's update at the next step
        out.append((dict(seen), want, without))
    return out


def _close(got, want):
    """Per tensor: |got - want| <= 1e-4 |want| + 1e-7 (float32 sums in another order)."""
    return all(float((g - w).norm()) <= 1e-4 * float(w.norm()) + 1e-7 for g, w in zip(got, want, strict=True))


def check(results):
    for seen, want, without in results:
        for name in ("G", "S", "D"):
            assert _close(seen[name], want[name]), f"{name}'s gradient is not that of its written objective"
        # the check can fail: without the made-up term S's gradient is not what the optimizer got
        assert not _close(seen["S"], without["S"])
        assert _close(seen["G"], without["G"])  # and the term reached S alone


def _config(case):
    return tiny_cfg("model.spectral_norm=false", "train.r1_every=2", *CASES[case])


@pytest.mark.parametrize("case", CASES)
def test_a_term_added_to_s_reaches_s_alone_with_its_weight(tmp_path, monkeypatch, case):
    add_l2_to_the_segmenter_phase(monkeypatch)
    cfg = _config(case)
    trainer = Trainer(cfg, tmp_path, progress=False)
    assert trainer.schedule.share_seg == (cfg.train.lambda_seg > 0) and trainer.schedule.share_d_forward
    check(steps_against_the_written_objective(trainer, cfg, steps=2, seed=7))  # an R1 step, then one without


def test_a_g_term_built_on_the_shared_term_keeps_s_out_of_gs_backward(tmp_path, monkeypatch):
    add_l2_to_the_segmenter_phase(monkeypatch)
    add_a_g_term_built_on_the_shared_one(monkeypatch)
    cfg = _config("seg and D forward shared")
    trainer = Trainer(cfg, tmp_path, progress=False)
    check(steps_against_the_written_objective(trainer, cfg, steps=2, seed=3, seg_sq=True))
    assert trainer.schedule._checked == {("S", "seg", "adv", "seg_sq"): False}  # found on the graph, once


def d_stand_in(x):  # deterministic and not the identity, so that the check below can fail
    return 0.7 * x.flip(-1) - 0.1


def s_stand_in(x):
    return 0.8 * x + 0.05


def test_augmented_views_reach_every_phase_as_written(tmp_path, monkeypatch):
    """train.d_augment / s_augment: D sees G's images and the photos through its view (its decoder rebuilds the
    view, R1 is taken through it, G learns through it) and S reads G's images through its own, in the shared
    seg term too. Stand-ins for the random views pin the wiring to the written objective."""
    import usis.train.phases as phases

    monkeypatch.setattr(phases, "augment", lambda x, policy: x if not policy else
                        s_stand_in(x) if policy == ("color",) else d_stand_in(x))
    add_l2_to_the_segmenter_phase(monkeypatch)
    cfg = tiny_cfg("model.spectral_norm=false", "train.r1_every=2", "train.lambda_seg=2.5",
                   "train.d_augment=translation,cutout", "train.s_augment=color")
    trainer = Trainer(cfg, tmp_path, progress=False)
    assert trainer.schedule.share_seg and trainer.schedule.share_d_forward
    check(steps_against_the_written_objective(trainer, cfg, steps=2, seed=5, d_view=d_stand_in, s_view=s_stand_in))
    # and the views cost none of D's shared forwards: on an R1 step, one on the photos, one on G's images
    calls = []
    trainer.nets.D.register_forward_hook(lambda *a: calls.append(1))
    assert trainer.step % cfg.train.r1_every == 0
    trainer.train_step(trainer.loaders.next_labels()["label"], trainer.loaders.next_photos()["image"])
    assert len(calls) == 2
    # the check can fail: the same steps against the objective without the views
    trainer2 = Trainer(cfg, tmp_path / "again", progress=False)
    results = steps_against_the_written_objective(trainer2, cfg, steps=1, seed=5)
    assert not all(_close(seen["D"], want["D"]) for seen, want, _ in results)


def _two_process_worker(dist: Dist, case: str, out: str):
    add_l2_to_the_segmenter_phase()  # in this (spawned) process

    def average(grads):  # the written objective of a data-parallel step: each rank's, averaged
        for gs in grads.values():
            for g in gs:
                torch_dist.all_reduce(g)
                g /= dist.world_size
        return grads

    cfg = _config(case)
    trainer = Trainer(cfg, out, dist=dist, progress=False)
    results = steps_against_the_written_objective(trainer, cfg, steps=2, seed=11 + 100 * dist.rank, average=average)
    check(results)
    return dist.all_gather_object(len(results))


@pytest.mark.parametrize("case", CASES)
def test_a_term_added_to_s_reaches_s_alone_in_two_processes(tmp_path, case):
    assert launch(_two_process_worker, 2, (case, str(tmp_path))) == [2, 2]


def test_the_phases_say_what_is_learned_and_nothing_of_how():
    """usis/train/phases.py: no optimizer, gradient average, autocast or requires_grad (the schedule's)."""
    text = (Path(__file__).resolve().parents[1] / "src/usis/train/phases.py").read_text()
    code = "\n".join(line.split("#")[0] for line in text.splitlines())
    code = re.sub(r'""".*?"""', "", code, flags=re.DOTALL)  # docstrings may name them
    for word in ("optim", "average", "autocast", "requires_grad", "backward", "dist"):
        assert word not in code, f"phases.py mentions {word!r}"


def test_s_reading_for_d_leaves_s_as_it_was():
    """model.d_reads: the reading is the argmax of S's classes, made without a gradient and without a power
    iteration of S's spectral norm (S read in eval mode, and left in the mode it was in)."""
    from usis.nn.build import build_networks

    cfg = tiny_cfg("model.d_reads=true")
    nets = build_networks(cfg)
    phases = USISPhases(cfg, nets, dontcare=0)
    before = {k: v.clone() for k, v in nets.S.state_dict().items()}
    x = torch.rand(2, 3, cfg.data.height, cfg.data.width, requires_grad=True) * 2 - 1
    read = phases.reading(x)
    assert nets.S.training and not read.requires_grad
    assert all(torch.equal(v, nets.S.state_dict()[k]) for k, v in before.items())
    with torch.no_grad():
        logits = nets.S.eval()(x)
    nets.S.train()
    classes = logits[:, 1:] if cfg.model.s_extra_channel else logits
    assert torch.equal(read.argmax(1), classes.argmax(1)) and read.shape[1] == cfg.model.num_classes
    # with S in training mode its spectral norm would have moved (the reading must not)
    nets.S(x)
    assert not all(torch.equal(v, nets.S.state_dict()[k]) for k, v in before.items())
