"""Per-epoch DVCLive metrics of fine-tuning, ``models/<member>/live/``: ``fold<k>/{train_loss,valid_mcrmse}``
(rank 0 only; a no-op when ``dvclive: false``).

    live = Live("base", enabled=True); live.start_fold(0); log = live.logger(0); log(record); live.finish(summary)
"""

from __future__ import annotations

import shutil
from pathlib import Path

from stack import paths
from stack.train import dist


class Live:
    def __init__(self, name: str, enabled: bool):
        self.live = None
        if enabled and dist.is_main():
            from dvclive import Live as DvcLive

            self.live = DvcLive(dir=str(paths.live_dir(name)), resume=True, save_dvc_exp=False, dvcyaml=False)

    def start_fold(self, fold: int) -> None:
        if self.live is not None:  # a retrained fold replaces its old curves
            shutil.rmtree(Path(self.live.plots_dir) / "metrics" / f"fold{fold}", ignore_errors=True)

    def logger(self, fold: int):
        def log(record: dict) -> None:
            if dist.is_main():
                from tqdm.auto import tqdm

                tqdm.write(f"fold {fold} epoch {record['epoch']}: train loss {record['train_loss']:.4f}  valid MCRMSE "
                           f"{record['valid_mcrmse']:.4f}  ({record['train_seconds'] / 60:.1f} + "
                           f"{record['valid_seconds'] / 60:.1f} min)")
            if self.live is None:
                return
            self.live.step = record["epoch"]
            self.live.log_metric(f"fold{fold}/train_loss", record["train_loss"])
            self.live.log_metric(f"fold{fold}/valid_mcrmse", record["valid_mcrmse"])
            self.live.make_summary()
        return log

    def finish(self, summary: dict) -> None:
        if self.live is not None:
            self.live.summary.update(summary)
            self.live.make_summary()
