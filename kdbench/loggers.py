"""Experiment trackers (see ``kdbench_register_loggers`` in kdbench.hookspecs): the built-in
TensorBoard logger, and the calls the runner makes to every logger a run turned on."""
import json
import sys
from pathlib import Path

from kdbench.errors import ConfigError

TENSORBOARD_DIR = "tensorboard"


class TensorBoardLogger:
    """TensorBoard event files in ``run_dir/tensorboard``: ``train/<loss>`` and ``val/<metric>``
    per epoch (step = epoch, 1-based), ``test/<metric>_last|_best`` at the end, the config as text.
    ``tensorboard --logdir runs`` shows every run of a grid."""

    @staticmethod
    def check():
        try:
            import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it)
        except ImportError:
            raise ConfigError("--log tensorboard needs the tensorboard package: pip install tensorboard") from None
        import tempfile

        try:  # a tensorboard that imports can still be broken: write and close an event file once
            from torch.utils.tensorboard import SummaryWriter

            with tempfile.TemporaryDirectory() as folder:
                writer = SummaryWriter(log_dir=folder)
                writer.add_scalar("check", 0.0, 1)
                writer.close()
        except Exception as exc:
            reason = (str(exc).splitlines() or [""])[0]
            raise ConfigError(f"--log tensorboard: the installed tensorboard does not work ({type(exc).__name__}: {reason}); "
                              "reinstall it: pip install --force-reinstall tensorboard") from None

    def __init__(self, run_dir):
        self.log_dir = Path(run_dir) / TENSORBOARD_DIR
        self.writer = None  # opened at the first epoch logged, so a resumed run can purge
        self.config = None
        self.last_epoch = 0

    def open(self, first_step=None):
        """The writer; ``first_step``: events of that step and later that an interrupted earlier
        process wrote are dropped (a resumed run logs those epochs again)."""
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=first_step)
            self.writer.add_text("config", "```\n" + json.dumps(self.config, indent=2, default=str) + "\n```")
        return self.writer

    def start(self, config):
        self.config = config

    def log_epoch(self, row):
        writer = self.open(first_step=row["epoch"])
        self.last_epoch = row["epoch"]
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                split, _, name = key.partition("_")  # train_loss -> train/loss, val_top1 -> val/top1
                writer.add_scalar(f"{split}/{name}", value, row["epoch"])

    def finish(self, record):
        writer = self.open()
        for key, value in record.get("metrics", {}).items():
            writer.add_scalar(f"test/{key}", value, record.get("epochs", self.last_epoch))
        writer.close()


def start(names, registry, run_dir, config):
    """Build the loggers ``names`` for one run and hand each the run's config."""
    loggers = [registry.get("loggers", name)(run_dir) for name in names]
    for logger in loggers:
        if hasattr(logger, "start"):
            logger.start(config)
    return loggers


def log_epoch(loggers, row):
    for logger in loggers:
        if hasattr(logger, "log_epoch"):
            logger.log_epoch(row)


def finish(loggers, record):
    """Give each logger the final record; a logger's failure here is reported, the record stands."""
    for logger in loggers:
        try:
            if hasattr(logger, "finish"):
                logger.finish(record)
        except Exception as exc:
            print(f"kdbench: logger {type(logger).__name__} failed to finish: {type(exc).__name__}: {exc}", file=sys.stderr)


def check(names, registry):
    """Before any training: every logger named exists and can work."""
    for name in names:
        factory = registry.get("loggers", name)
        if hasattr(factory, "check"):
            factory.check()
