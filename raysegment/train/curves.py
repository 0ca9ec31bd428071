"""Training curves: TensorBoard event files beside train.log and a PNG plot, both in Global.output.

    tensorboard --logdir output/camvid        # loss, lr, images/s per log interval; val mIoU per evaluation

The points also live in the loop state that every checkpoint saves (`state["curves"]`), so a run
resumed after a kill or in several pieces draws one whole curve: the event file of a resumed run
starts with `purge_step` at the resumed iteration (TensorBoard drops the killed run's later
points), and training_curves.png is redrawn from the saved points at every evaluation.
"""

import os

PLOT = "training_curves.png"
# TensorBoard tag -> (panel title, the state key the points are kept under)
SERIES = {"train/loss": "loss", "train/lr": "lr", "train/images_per_s": "images_per_s", "val/mIoU": "mIoU",
          "val/pixel_accuracy": "pixel_accuracy"}


class Curves:
    """Rank 0's curve writer. `points` is the state's dict (series -> [[iteration, value], ...]),
    extended in place so checkpoints carry it."""

    def __init__(self, out, points, resumed_at):
        from tensorboardX import SummaryWriter

        self.out, self.points = out, points  # a checkpoint's points end at its iteration
        for key in SERIES.values():
            points.setdefault(key, [])
        self.writer = SummaryWriter(out, purge_step=resumed_at + 1 if resumed_at else None, flush_secs=10)

    def add(self, iteration, **values):
        for tag, key in SERIES.items():
            if values.get(key) is not None:
                self.points[key].append([iteration, float(values[key])])
                self.writer.add_scalar(tag, float(values[key]), iteration)

    def plot(self):
        """Redraw training_curves.png: loss, learning rate and val mIoU against iterations."""
        import matplotlib

        matplotlib.use("Agg")  # files only: no display on a cluster node
        import matplotlib.pyplot as plt

        self.writer.flush()
        panels = [("loss", "training loss"), ("lr", "learning rate"), ("mIoU", "val mIoU")]
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), constrained_layout=True)
        for ax, (key, title) in zip(axes, panels):
            pts = self.points.get(key, [])
            if pts:
                few = key == "mIoU" or len(pts) <= 50  # markers, or a lone point would not show
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if few else None, markersize=3)
            ax.set_title(title)
            ax.set_xlabel("iteration")
            ax.grid(alpha=0.3)
        fig.savefig(os.path.join(self.out, PLOT), dpi=110)
        plt.close(fig)

    def close(self):
        self.writer.close()
