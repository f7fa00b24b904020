"""Soft multi-label contrastive objective: contract, land-cover targets, EMA teacher, continual
pretraining from timm / eofm weights, and a real run (prep with land cover -> eofm-pretrain ->
checkpoint with the teacher -> export -> init_from)."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from pretrain.config import OptimSpec
from pretrain.continual import init_backbone
from pretrain.engine import param_groups
from pretrain.objectives._contrastive_common import ema_momentum
from pretrain.objectives.soft_contrastive import label_similarity
from tests.conftest import ROOT, SSL4EO_S2A
from tests.pretrain.contrastive_helpers import derived_landcover, make_batch, tiny_objective, train_losses


def test_contract_gradient_on_every_trainable_parameter_teacher_frozen():
    obj = tiny_objective("soft_contrastive").train()
    out = obj(make_batch())
    assert {"loss", "loss_hard", "loss_soft", "pos_sim", "neg_sim", "acc", "ema_momentum"} <= set(out)
    assert all(v.ndim == 0 and torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    trainable = {n for n, p in obj.named_parameters() if p.requires_grad}
    assert any(n.startswith("backbone.") for n in trainable) and any(n.startswith("projector.") for n in trainable)
    for n, p in obj.named_parameters():
        if n.startswith("teacher."):
            assert not p.requires_grad and p.grad is None, n
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
    in_optimizer = {id(p) for g in param_groups(obj, OptimSpec()) for p in g["params"]}
    assert in_optimizer == {id(p) for p in obj.parameters() if p.requires_grad}
    assert "teacher.backbone.blocks.0.attn.qkv.weight" in obj.state_dict()     # saved with checkpoints
    assert not obj.teacher.training                                          # no drop path in the teacher


def test_missing_landcover_is_a_clear_error():
    batch = make_batch()
    del batch["landcover"]
    with pytest.raises(ValueError, match="no 'landcover'.*landcover: {path"):
        tiny_objective("soft_contrastive")(batch)


def test_soft_weight_zero_is_instance_contrast_without_labels():
    """soft_weight 0: no land cover needed; the loss is the hard InfoNCE term alone, the same
    number as with labels present (the soft term contributes nothing), and it trains."""
    batch = make_batch(b=6)
    no_labels = {k: v for k, v in batch.items() if k != "landcover"}
    torch.manual_seed(5)
    with_labels = tiny_objective("soft_contrastive", soft_weight=0.0)(batch)
    torch.manual_seed(5)
    out = tiny_objective("soft_contrastive", soft_weight=0.0)(no_labels)
    assert torch.allclose(out["loss"], with_labels["loss"]) and out["loss_soft"] == 0
    assert torch.allclose(out["loss"], out["loss_hard"])
    out["loss"].backward()
    losses = train_losses(tiny_objective("soft_contrastive", soft_weight=0.0), no_labels)
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5     # the views of one scene are found


def test_label_similarity_cosine_jaccard_multihot():
    y = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    cos = label_similarity(y, y, "cosine")
    assert cos[0, 1] == pytest.approx(1.0) and cos[0, 2] == 0 and cos[0, 3] == pytest.approx(2 ** -0.5)
    assert cos[4].abs().sum() == 0                       # a scene without labels resembles nothing
    jac = label_similarity(y, y, "jaccard")
    assert jac[0, 1] == pytest.approx(1.0) and jac[0, 2] == 0 and jac[0, 3] == pytest.approx(0.5 / 1.5)
    obj = tiny_objective("soft_contrastive", label_form="multihot", presence_threshold=0.3)
    assert torch.equal(obj._labels(torch.tensor([[0.2, 0.5, 0.3]])), torch.tensor([[0.0, 1.0, 0.0]]))
    with pytest.raises(ValueError, match="label_similarity"):
        label_similarity(y, y, "dice")


@pytest.mark.parametrize("soft_loss", ["ce", "bce", "mse"])
def test_soft_term_rewards_keeping_same_land_cover_scenes_together(soft_loss):
    """Two land-cover groups of 3 scenes. Embedding geometry A puts same-group scenes close
    (cos 0.8), B pushes every other scene away (cos 0). The hard InfoNCE term prefers B; the
    soft term prefers A, which is what keeps similar scenes from being pushed apart."""
    obj = tiny_objective("soft_contrastive", soft_loss=soft_loss)
    labels = torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 3)
    target = label_similarity(labels, labels)
    same = target > 0.5
    eye = torch.eye(6, dtype=torch.bool)
    cos_a = torch.where(eye, 1.0, torch.where(same, 0.8, 0.0))
    cos_b = torch.where(eye, 1.0, 0.0)
    own = torch.arange(6)

    def terms(cos):
        logits = cos / obj.temperature
        return F.cross_entropy(logits, own), obj._soft(logits, cos, target)
    (hard_a, soft_a), (hard_b, soft_b) = terms(cos_a), terms(cos_b)
    assert hard_a > hard_b and soft_a < soft_b


def test_teacher_is_an_ema_of_the_student_once_per_step():
    obj = tiny_objective("soft_contrastive", ema_momentum=0.9, ema_momentum_end=0.9)
    t0 = [p.clone() for p in obj.teacher.parameters()]
    student = list(obj.backbone.parameters()) + list(obj.projector.parameters())
    assert all(torch.equal(a, b) for a, b in zip(t0, student))           # starts as a copy
    with torch.no_grad():
        for p in student:
            p.add_(1.0)
    obj.set_progress(0, 10)                                               # before the first step: nothing
    assert all(torch.equal(a, b) for a, b in zip(t0, obj.teacher.parameters()))
    obj.set_progress(1, 10)
    for a, s, t in zip(t0, student, obj.teacher.parameters()):
        assert torch.allclose(t, 0.9 * a + 0.1 * s, atol=1e-6)
    after = [p.clone() for p in obj.teacher.parameters()]
    obj.set_progress(1, 10)                                               # same step again: no second update
    assert all(torch.equal(a, b) for a, b in zip(after, obj.teacher.parameters()))
    assert ema_momentum(0, 10, 0.996, 1.0) == pytest.approx(0.996)
    assert ema_momentum(5, 10, 0.996, 1.0) == pytest.approx(0.998)
    assert ema_momentum(10, 10, 0.996, 1.0) == pytest.approx(1.0)


def test_ema_in_bf16_keeps_small_updates():
    """(1 - m) = 0.001 updates vanish in bf16; the fp32 shadow keeps them."""
    obj = tiny_objective("soft_contrastive", ema_momentum=0.999, ema_momentum_end=0.999).to(torch.bfloat16)
    with torch.no_grad():
        for p in obj.teacher.parameters():
            p.fill_(1.0)
        for p in list(obj.backbone.parameters()) + list(obj.projector.parameters()):
            p.fill_(2.0)
    for step in range(1, 51):
        obj.set_progress(step, 100)
    expected = 2.0 - 0.999 ** 50                                           # 1.0488; plain bf16 stays at 1.0
    for p in obj.teacher.parameters():
        assert p.dtype == torch.bfloat16 and abs(float(p.float().mean()) - expected) < 0.01


def _timm_vit(embed_dim=192, heads=3, depth=1, seed=3):
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(seed)
    return VisionTransformer(img_size=32, patch_size=8, in_chans=3, embed_dim=embed_dim, depth=depth,
                             num_heads=heads, num_classes=10)


def test_init_from_timm_state_dict_transfers_blocks_and_reinitialises_patch_embed(tmp_path):
    from safetensors.torch import save_file

    from data_prep.recipe import load_recipe
    from pretrain.config import PretrainConfig
    from pretrain.train import build_model

    vit = _timm_vit()
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(tmp_path / "vit.safetensors"))
    args = ["model.size=tiny", "model.depth=1", "model.patch_size=8", "objective.name=soft_contrastive",
            "objective.proj_hidden_dim=16", "objective.proj_dim=8"]
    torch.manual_seed(0)
    fresh = build_model(load_recipe(PretrainConfig, None, args))
    for weights in ("vit.pth", "vit.safetensors"):
        torch.manual_seed(0)
        model = build_model(load_recipe(PretrainConfig, None, args + [f"model.init_from={tmp_path / weights}"]))
        ours, theirs = model.backbone.state_dict(), vit.state_dict()
        for name in ("blocks.0.attn.qkv.weight", "blocks.0.mlp.fc2.bias", "norm.weight", "cls_token"):
            assert torch.equal(ours[name], theirs[name]), name
        for name, v in fresh.backbone.state_dict().items():          # the generated patch embedding: re-initialised
            if name.startswith("patch_embed."):
                assert torch.equal(ours[name], v), name
        # the EMA teacher starts from the loaded weights
        assert torch.equal(model.teacher["backbone"].blocks[0].attn.qkv.weight, theirs["blocks.0.attn.qkv.weight"])
    report = init_backbone(fresh.backbone, str(tmp_path / "vit.pth"))
    assert report.kind == "timm" and "blocks.0.attn.qkv.weight" in report.loaded
    assert {"patch_embed.proj.weight", "pos_embed", "head.weight"} <= set(report.ignored)
    assert report.reinitialised and all(n.startswith("patch_embed.") for n in report.reinitialised)
    assert "re-initialised" in report.summary() and "patch_embed" in report.summary()


def test_init_from_errors_name_the_problem(tmp_path):
    from pretrain.models import build_backbone
    bb = build_backbone("vit", "tiny", depth=1, patch_size=8)
    torch.save(_timm_vit(embed_dim=64, heads=2).state_dict(), tmp_path / "narrow.pth")
    with pytest.raises(ValueError, match=r"blocks.0.norm1.weight has shape \(64,\).*expects \(192,\)|cls_token has shape"):
        init_backbone(bb, str(tmp_path / "narrow.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read .*junk.pth"):
        init_backbone(bb, str(tmp_path / "junk.pth"))
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "cnn.pth")
    with pytest.raises(ValueError, match="no transformer block matched"):
        init_backbone(bb, str(tmp_path / "cnn.pth"))
    with pytest.raises(FileNotFoundError, match="neither an eofm export"):
        init_backbone(bb, str(tmp_path / "missing"))


@pytest.mark.slow
def test_real_run_checkpoints_the_teacher_exports_the_student_and_continues(tmp_path):
    """prep real SSL4EO-S12 chips with (derived) land cover -> eofm-pretrain soft_contrastive ->
    the checkpoint holds the EMA teacher (moved from its init, not the student) -> eofm-export
    gives the student -> a second run starts from that export (model.init_from)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}

    def run(*args):
        r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, f"{args}:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
        return r

    lc = derived_landcover(sorted(p for p in SSL4EO_S2A.iterdir() if p.is_dir()), tmp_path / "lc.tif")
    data = tmp_path / "data"
    run("-m", "data_prep", "run", "configs/prep/ssl4eo_softcon.yaml", f"output.path={data}", f"landcover.path={lc}",
        f"sources=[{{kind: auto, paths: [{SSL4EO_S2A}], resampling: bilinear}}]", "--quiet")
    common = ["configs/pretrain/softcon_ssl4eo.yaml", f"data.path={data}", "data.batch_size=8", "model.depth=1",
              "objective.proj_hidden_dim=32", "objective.proj_dim=16", "objective.ema_momentum=0.5",
              "train.progress=false", "train.log_every=1", "optim.warmup_steps=1", "train.steps=3"]
    run("-m", "pretrain", *common, f"train.out={tmp_path / 'run'}")
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3] and all("loss_soft" in m and "pos_sim" in m for m in metrics)

    from data_prep.recipe import load_recipe
    from pretrain.config import PretrainConfig
    from pretrain.train import _seed_everything, build_model
    _seed_everything(0)                                       # what train() does on rank 0 before building
    init = build_model(load_recipe(PretrainConfig, ROOT / common[0], common[1:])).state_dict()
    files = list((tmp_path / "run" / "checkpoints" / "step00000003").glob("mp_rank_00_model_states.pt"))
    state = torch.load(files[0], map_location="cpu", weights_only=False)["module"]
    name = "backbone.blocks.0.attn.qkv.weight"
    teacher = state["teacher." + name]
    assert not torch.equal(teacher, init["teacher." + name])            # the EMA moved it
    assert not torch.equal(teacher, state[name])                        # and it is not the student

    from pretrain.export import export, load_exported
    export(tmp_path / "run", tmp_path / "export")
    encoder, _ = load_exported(tmp_path / "export")
    assert torch.equal(encoder.state_dict()["blocks.0.attn.qkv.weight"], state[name])
    r = run("-m", "pretrain", *common, f"train.out={tmp_path / 'run2'}", f"model.init_from={tmp_path / 'export'}",
            "train.steps=1")
    assert "init_from" in r.stderr and "eofm-export" in r.stderr and "re-initialised 0" in r.stderr
