"""Every experiment/model/trainer/logger/callbacks config composes, and the paper protocol is
exactly the paper's solver."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf
from training_fixtures import CONF_DIR, compose_train

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


def test_every_group_is_covered() -> None:
    assert {"levi_hassner", "modern"} <= set(EXPERIMENTS)
    assert {"levi_hassner", "resnet18", "resnet50", "inception_resnet_v1"} <= set(MODELS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_resolves(experiment: str, tmp_path: Path) -> None:
    cfg = compose_train([f"experiment={experiment}"], tmp_path)
    OmegaConf.resolve(cfg)  # every interpolation resolves
    assert cfg.data.model_name == cfg.model.model_name  # sizes: that network's face_spec
    assert not {"crop_size", "resize_size", "input_size"} & (set(cfg.data) | set(cfg.model))
    assert cfg.optimized_metric.startswith("val/")


@pytest.mark.parametrize("model", MODELS)
def test_model_config_builds_its_network_with_matching_data_sizes(
    model: str, tmp_path: Path
) -> None:
    cfg = compose_train([f"model={model}"], tmp_path)
    module = instantiate(cfg.model, _recursive_=False)
    datamodule = instantiate(cfg.data)
    assert datamodule.face_spec == module.face_spec == module.model.face_spec


def test_levi_hassner_experiment_is_the_paper_solver(tmp_path: Path) -> None:
    cfg = compose_train(["experiment=levi_hassner"], tmp_path)
    opt, groups, sched = cfg.model.optimizer, cfg.model.param_groups, cfg.model.scheduler
    assert (opt._target_, opt._partial_) == ("torch.optim.SGD", True)
    assert (opt.lr, opt.momentum, opt.weight_decay) == (0.001, 0.9, 0.0005)
    assert (groups.bias_lr_mult, groups.bias_weight_decay, groups.head_lr_mult) == (2.0, 0.0, 10.0)
    assert sched._target_ == "torch.optim.lr_scheduler.StepLR"
    assert (sched.step_size, sched.gamma) == (10000, 0.1)
    assert cfg.trainer.max_steps == 50000
    assert cfg.data.batch_size == 50
    spec = instantiate(cfg.data).face_spec
    assert (spec.face_size, spec.resize_size, spec.crop_size) == (256, 256, 227)
    assert cfg.data.test_ten_crop is True
    assert cfg.model.model_name == "levi_hassner"
    assert cfg.model.model_kwargs.mode == "separate"
    assert cfg.model.model_kwargs.dropout == 0.5 and cfg.model.model_kwargs.caffe_init
    assert cfg.model.model_kwargs.mean == "image"  # the prototxt's per-pixel mean_file
    assert cfg.model.label_smoothing == 0.0
    # two nets, each on its own list, each from its own best validation
    assert cfg.data.train_batches == "per_task" and cfg.selection == "per_task"
    assert list(cfg.data.train_tasks) == list(cfg.model.model_kwargs.tasks)
    assert cfg.data.duplicates == "keep"  # the published lists keep the duplicated rows


def test_modern_experiment_is_separate_from_the_paper(tmp_path: Path) -> None:
    cfg = compose_train(["experiment=modern"], tmp_path)
    assert cfg.model.optimizer._target_ == "torch.optim.AdamW"
    assert cfg.model.scheduler._target_ == "agegender.training.optim.warmup_cosine"
    assert cfg.model.label_smoothing > 0
    assert cfg.model.model_kwargs.mean == "channel"
    assert cfg.data.train_batches == "joint" and cfg.selection == "joint"
    assert cfg.data.duplicates == "drop"


#: The numbers each experiment ran with before its optimiser/scheduler blocks became group
#: selections (conf/model/{optimizer,param_groups,scheduler}/): composing must keep them.
_SGD_CAFFE = {"_target_": "torch.optim.SGD", "lr": 0.001, "momentum": 0.9, "weight_decay": 0.0005}
_CAFFE_GROUPS = {"bias_lr_mult": 2.0, "bias_weight_decay": 0.0, "head_lr_mult": 10.0}
_STEP = {"_target_": "torch.optim.lr_scheduler.StepLR", "step_size": 10000, "gamma": 0.1}
_UNIFORM = {"bias_lr_mult": 1.0, "bias_weight_decay": 0.0, "head_lr_mult": 1.0}
_COSINE = {"_target_": "agegender.training.optim.warmup_cosine", "min_lr_ratio": 0.01}
_ADAMW = {"_target_": "torch.optim.AdamW", "weight_decay": 0.05}
_PAPER = (_SGD_CAFFE, {**_CAFFE_GROUPS, "backbone_lr_mult": 1.0}, _STEP, 50000, 50)
EFFECTIVE = {
    "levi_hassner": _PAPER,
    "cv": _PAPER,
    "modern": (
        {**_ADAMW, "lr": 0.0003},
        {**_UNIFORM, "backbone_lr_mult": 1.0},
        {**_COSINE, "warmup_steps": 1000},
        20000,
        64,
    ),
    "resnet18_finetune": (
        {**_ADAMW, "lr": 0.001},
        {**_UNIFORM, "backbone_lr_mult": 0.1},
        {**_COSINE, "warmup_steps": 500},
        10000,
        64,
    ),
    # the seeds' recipes (model=timm: AdamW, backbone at 0.1x, warm-up + cosine)
    "coarse3": (
        {**_ADAMW, "lr": 0.001},
        {**_UNIFORM, "backbone_lr_mult": 0.1},
        {**_COSINE, "warmup_steps": 500},
        10000,
        32,
    ),
    "kface": (
        {**_ADAMW, "lr": 0.001},
        {**_UNIFORM, "backbone_lr_mult": 0.1},
        {**_COSINE, "warmup_steps": 500},
        10000,
        32,
    ),
}


@pytest.mark.parametrize("experiment", sorted(EFFECTIVE))
def test_experiment_composes_the_optimiser_groups_with_its_numbers(
    experiment: str, tmp_path: Path
) -> None:
    cfg = compose_train([f"experiment={experiment}"], tmp_path)
    model = OmegaConf.to_container(cfg.model, resolve=True)
    optimizer, groups, scheduler, max_steps, batch_size = EFFECTIVE[experiment]
    assert model["optimizer"] == {**optimizer, "_partial_": True}
    assert model["param_groups"] == groups
    assert model["scheduler"] == {**scheduler, "_partial_": True}
    assert (cfg.trainer.max_steps, cfg.trainer.max_epochs) == (max_steps, -1)
    assert cfg.data.batch_size == batch_size


def test_experiments_cover_every_experiment_config() -> None:
    assert set(EFFECTIVE) == set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", ["levi_hassner", "modern"])
def test_optuna_search_space_keys_exist(experiment: str, tmp_path: Path) -> None:
    search = OmegaConf.load(CONF_DIR / "hparams_search" / "optuna.yaml")
    cfg = compose_train([f"experiment={experiment}"], tmp_path)
    for key in search.hydra.sweeper.params:
        assert OmegaConf.select(cfg, key) is not None, key


@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp"])
def test_trainer_configs_compose(trainer: str, tmp_path: Path) -> None:
    cfg = compose_train([f"trainer={trainer}"], tmp_path)
    assert cfg.trainer._target_ == "pytorch_lightning.Trainer"
    if trainer == "ddp":
        assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices == 2


@pytest.mark.parametrize("logger", ["csv", "tensorboard", "many"])
def test_logger_configs_instantiate(logger: str, tmp_path: Path) -> None:
    cfg = compose_train([f"logger={logger}"], tmp_path)
    loggers = [instantiate(c) for c in cfg.logger.values()]
    assert loggers and all(Path(lg.save_dir) == tmp_path for lg in loggers)


def test_callback_configs_instantiate(tmp_path: Path) -> None:
    cfg = compose_train(
        ["callbacks=[default,early_stopping,freeze_backbone,progress_bar]"], tmp_path
    )
    names = {type(instantiate(c)).__name__ for c in cfg.callbacks.values()}
    assert names == {
        "BestCheckpoint",
        "LatestCheckpoint",
        "LearningRateMonitor",
        "TQDMProgressBar",
        "EarlyStopping",
        "FreezeBackbone",
    }
    assert cfg.callbacks.model_checkpoint.monitor == "val/acc"
    # last.ckpt comes from LatestCheckpoint alone (ModelCheckpoint's save_last lags behind)
    assert cfg.callbacks.model_checkpoint.save_last is False


DEBUGS = sorted(p.stem for p in (CONF_DIR / "debug").glob("*.yaml"))


@pytest.mark.parametrize("debug", DEBUGS)
def test_debug_configs_compose_over_an_experiment(debug: str, tmp_path: Path) -> None:
    cfg = compose_train(["experiment=levi_hassner", f"debug={debug}"], tmp_path)
    OmegaConf.resolve(cfg)
    assert (cfg.trainer.accelerator, cfg.trainer.devices) == ("cpu", 1)
    assert cfg.data.num_workers == 0


def test_debug_fdr_is_fast_dev_run_on_one_cpu(tmp_path: Path) -> None:
    assert {"fdr", "limit", "tests"} <= set(DEBUGS)
    # debug comes after experiment in train.yaml's defaults, whatever the command-line order
    cfg = compose_train(["debug=fdr", "experiment=modern"], tmp_path)
    assert cfg.trainer.fast_dev_run is True
    assert (cfg.trainer.accelerator, cfg.trainer.devices) == ("cpu", 1)
    assert cfg.trainer.max_steps == -1  # not modern's 20000
    assert cfg.task_name == "debug"
    cfg = compose_train(["experiment=modern", "debug=limit"], tmp_path)
    assert (cfg.trainer.max_epochs, cfg.trainer.max_steps) == (2, -1)
    assert (cfg.trainer.limit_train_batches, cfg.trainer.limit_val_batches) == (3, 2)


def test_debug_tests_holds_the_old_fast_settings(tmp_path: Path) -> None:
    """debug=tests is what tests/training_fixtures.py's FAST list used to spell out."""
    cfg = compose_train(["experiment=levi_hassner", "debug=tests"], tmp_path)
    assert cfg.data.demo is True and cfg.data.root.endswith("demo")  # data=demo
    assert cfg.data.batch_size == 4  # not the experiment's 50
    assert cfg.data.num_workers == 0
    trainer = cfg.trainer
    assert (trainer.accelerator, trainer.devices) == ("cpu", 1)
    assert trainer.enable_progress_bar is False and trainer.enable_model_summary is False
    assert (trainer.num_sanity_val_steps, trainer.log_every_n_steps) == (0, 1)
    assert (trainer.limit_val_batches, trainer.limit_test_batches) == (2, 2)
    # only those: the experiment's budget and the task name stay
    assert (trainer.max_steps, trainer.limit_train_batches) == (50000, None)
    assert cfg.task_name == "levi_hassner"


@pytest.mark.parametrize("before", [True, False])
def test_command_line_overrides_win_over_debug(before: bool, tmp_path: Path) -> None:
    own = ["trainer.max_steps=3", "trainer.limit_val_batches=1", "data.batch_size=8"]
    overrides = [*own, "debug=tests"] if before else ["debug=tests", *own]
    cfg = compose_train(["experiment=levi_hassner", *overrides], tmp_path)
    assert cfg.trainer.max_steps == 3
    assert cfg.trainer.limit_val_batches == 1
    assert cfg.data.batch_size == 8
    assert compose_train(["debug=tests", "data=adience"], tmp_path).data.get("demo") is None
