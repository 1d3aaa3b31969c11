"""The LightningModule: masked losses and metrics, 10-crop averaging, the paper's parameter
groups and schedule, plain-data hyper-parameters."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from agegender.training.metrics import StageMetrics
from agegender.training.module import AgeGenderModule, masked_targets
from agegender.training.optim import build_optimizer, build_scheduler, cosine_factor

PAPER_OPTIMIZER = {
    "_target_": "torch.optim.SGD",
    "_partial_": True,
    "lr": 1e-3,
    "momentum": 0.9,
    "weight_decay": 5e-4,
}
PAPER_GROUPS = {"bias_lr_mult": 2.0, "bias_weight_decay": 0.0, "head_lr_mult": 10.0}
PAPER_SCHEDULER = {
    "_target_": "torch.optim.lr_scheduler.StepLR",
    "_partial_": True,
    "step_size": 10000,
    "gamma": 0.1,
}


@pytest.fixture(scope="module")
def module() -> AgeGenderModule:
    return AgeGenderModule(
        "levi_hassner",
        {"mode": "shared"},
        optimizer=PAPER_OPTIMIZER,
        param_groups=PAPER_GROUPS,
        scheduler=PAPER_SCHEDULER,
    )


def _batch(age: list[int], gender: list[int]) -> dict[str, torch.Tensor]:
    age_t, gender_t = torch.tensor(age), torch.tensor(gender)
    return {"age": age_t, "gender": gender_t, "age_mask": age_t >= 0, "gender_mask": gender_t >= 0}


def test_unlabelled_samples_change_neither_loss_nor_gradient(module: AgeGenderModule) -> None:
    torch.manual_seed(0)
    logits = {"age": torch.randn(4, 8, requires_grad=True), "gender": torch.randn(4, 2)}
    batch = _batch([3, -1, 5, -1], [0, 1, 1, 0])
    losses = module.task_losses(logits, batch)
    expected = F.cross_entropy(logits["age"][[0, 2]], torch.tensor([3, 5]))
    assert torch.allclose(losses["age"], expected)
    losses["age"].backward()
    assert logits["age"].grad[[1, 3]].abs().sum() == 0
    assert logits["age"].grad[[0, 2]].abs().sum() > 0


def test_mask_false_wins_over_a_label(module: AgeGenderModule) -> None:
    batch = _batch([3, 4], [0, 1])
    batch["age_mask"] = torch.tensor([True, False])
    assert masked_targets(batch, "age").tolist() == [True, False]


def test_batch_without_any_label_gives_zero_loss_not_nan(module: AgeGenderModule) -> None:
    logits = {"age": torch.randn(2, 8, requires_grad=True), "gender": torch.randn(2, 2)}
    losses = module.task_losses(logits, _batch([-1, -1], [0, 1]))
    assert losses["age"].item() == 0.0 and losses["age"].requires_grad
    assert math.isfinite(module.total_loss(losses).item())


def test_loss_weights_scale_each_task() -> None:
    m = AgeGenderModule("levi_hassner", {"mode": "shared"}, loss_weights={"age": 0.0})
    losses = {"age": torch.tensor(5.0), "gender": torch.tensor(2.0)}
    assert m.total_loss(losses).item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="unknown tasks"):
        AgeGenderModule("levi_hassner", {"mode": "shared"}, loss_weights={"agee": 1.0})


def test_single_task_module_has_only_that_head() -> None:
    m = AgeGenderModule("levi_hassner", {"mode": "separate", "tasks": ["gender"]})
    assert m.tasks == ("gender",)
    out = m.eval()(torch.rand(1, 3, 227, 227) * 255)
    assert set(out) == {"gender"}


def test_metrics_skip_unlabelled_and_count_one_off() -> None:
    metrics = StageMetrics(("age", "gender"))
    scores = torch.zeros(4, 8)
    scores[torch.arange(4), torch.tensor([2, 3, 7, 0])] = 1.0  # predictions 2, 3, 7, 0
    batch = _batch([2, 2, -1, 5], [0, 0, 0, 0])
    known = masked_targets(batch, "age")
    metrics.update("age", scores[known], batch["age"][known])
    scalars, confusion = metrics.compute_and_reset("val")
    # labelled: (pred 2, true 2) exact; (3, 2) 1-off; (0, 5) wrong; the unlabelled 7 ignored
    assert scalars["val/age_acc"] == pytest.approx(1 / 3)
    assert scalars["val/age_acc_1off"] == pytest.approx(2 / 3)
    assert scalars["val/age_count"] == 3
    assert int(confusion["age"].sum()) == 3 and int(confusion["age"][2, 2]) == 1
    assert scalars["val/age_acc_class/8-12"] == pytest.approx(0.5)
    assert scalars["val/age_acc_class/38-43"] == 0.0
    assert "val/age_acc_class/0-2" not in scalars  # no sample of that class: no figure
    assert "val/gender_acc" not in scalars  # no gender update at all: reported as absent


def test_ten_crop_averages_probabilities(module: AgeGenderModule) -> None:
    module.eval()
    torch.manual_seed(0)
    crops = torch.rand(2, 10, 3, 227, 227) * 255
    batch = {"image": crops, **_batch([1, 4], [0, 1])}
    with torch.no_grad():
        module.test_step(batch, 0, dataloader_idx=1)
        expected = {
            t: v.softmax(1).view(2, 10, -1).mean(1) for t, v in module(crops.flatten(0, 1)).items()
        }
    scalars, _ = module.metrics["test_10crop"].compute_and_reset("test_10crop")
    want = (expected["age"].argmax(1) == torch.tensor([1, 4])).float().mean().item()
    assert scalars["test_10crop/age_acc"] == pytest.approx(want)
    assert scalars["test_10crop/age_count"] == 2


def test_paper_param_groups_follow_the_train_prototxt(module: AgeGenderModule) -> None:
    configured = module.configure_optimizers()  # from the hyper-parameters, as Lightning does
    optimizer = configured["optimizer"]
    assert isinstance(optimizer, torch.optim.SGD)
    assert configured["lr_scheduler"]["interval"] == "step"  # Caffe counts iterations
    assert configured["lr_scheduler"]["frequency"] == 1
    assert isinstance(configured["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.StepLR)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["body/weight"]["lr"] == pytest.approx(1e-3)
    assert groups["body/weight"]["weight_decay"] == pytest.approx(5e-4)
    assert groups["body/bias"]["lr"] == pytest.approx(2e-3)
    assert groups["body/bias"]["weight_decay"] == 0.0
    assert groups["heads/weight"]["lr"] == pytest.approx(1e-2)
    assert groups["heads/weight"]["weight_decay"] == pytest.approx(5e-4)
    assert groups["heads/bias"]["lr"] == pytest.approx(2e-2)
    assert groups["heads/bias"]["weight_decay"] == 0.0
    assert optimizer.defaults["momentum"] == 0.9
    # every parameter in exactly one group
    listed = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(listed) == sorted(id(p) for p in module.model.parameters())
    head_bias = {id(p) for p in groups["heads/bias"]["params"]}
    assert head_bias == {id(h.bias) for h in module.model.heads.values()}


def test_step_schedule_divides_every_lr_by_ten_every_step_size(module: AgeGenderModule) -> None:
    optimizer = build_optimizer(module.model, PAPER_OPTIMIZER, PAPER_GROUPS)
    scheduler = build_scheduler(optimizer, {**PAPER_SCHEDULER, "step_size": 3}, 50)
    lrs = []
    for _ in range(7):
        lrs.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    assert lrs[2] == pytest.approx(lrs[0])
    assert lrs[3] == pytest.approx([lr * 0.1 for lr in lrs[0]])
    assert lrs[6] == pytest.approx([lr * 0.01 for lr in lrs[0]])


def test_cosine_warms_up_then_decays_to_floor() -> None:
    assert cosine_factor(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert cosine_factor(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert cosine_factor(10, 10, 100, 0.1) == pytest.approx(1.0)
    assert cosine_factor(100, 10, 100, 0.1) == pytest.approx(0.1)
    assert 0.1 < cosine_factor(55, 10, 100, 0.1) < 1.0
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)])
    cosine = {"_target_": "agegender.training.optim.warmup_cosine", "_partial_": True}
    with pytest.raises(ValueError, match="finite step budget"):
        build_scheduler(optimizer, cosine, math.inf)
    # the step budget reaches the factory as total_steps: at the budget the floor is reached
    scheduler = build_scheduler(optimizer, {**cosine, "warmup_steps": 2, "min_lr_ratio": 0.1}, 10)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5e-3)  # warm-up step 1 of 2
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)


def test_optimizer_without_a_base_setting_takes_the_class_default() -> None:
    net = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(net, {"_target_": "torch.optim.AdamW", "_partial_": True})
    assert [g["weight_decay"] for g in optimizer.param_groups] == [1e-2, 0.0]  # AdamW's 1e-2
    assert optimizer.param_groups[0]["lr"] == 1e-3


def test_old_style_optimizer_and_group_configs_are_refused_clearly() -> None:
    net = torch.nn.Linear(2, 2)
    old = {"_target_": "torch.optim.SGD", "lr": 1e-3, "bias_lr_mult": 2.0}
    with pytest.raises(ValueError, match="_partial_: true"):
        build_optimizer(net, old)
    with pytest.raises(ValueError, match="_partial_: true"):
        build_scheduler(build_optimizer(net, PAPER_OPTIMIZER), {"name": "step"}, 10)
    with pytest.raises(ValueError, match="unknown keys"):
        AgeGenderModule("levi_hassner", {"mode": "shared"}, param_groups={"head_lr": 10.0})


def test_wrong_input_size_in_config_is_an_error() -> None:
    with pytest.raises(ValueError, match="input_size=227"):
        AgeGenderModule("levi_hassner", {"mode": "shared"}, input_size=224)


def test_hyper_parameters_are_plain_data(module: AgeGenderModule) -> None:
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(
        {
            "optimizer": PAPER_OPTIMIZER,
            "groups": PAPER_GROUPS,
            "scheduler": PAPER_SCHEDULER,
            "kw": {"mode": "shared", "tasks": ["age"]},
        }
    )
    m = AgeGenderModule(
        "levi_hassner",
        cfg.kw,
        optimizer=cfg.optimizer,
        param_groups=cfg.groups,
        scheduler=cfg.scheduler,
    )
    allowed = (str, int, float, bool, type(None), dict, list)

    def walk(x: object) -> None:
        assert isinstance(x, allowed), type(x)
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(dict(m.hparams))
    assert m.hparams.model_kwargs == {"mode": "shared", "tasks": ["age"]}
    assert m.hparams.optimizer == PAPER_OPTIMIZER and m.hparams.param_groups == PAPER_GROUPS
    assert m.hparams.scheduler == PAPER_SCHEDULER
