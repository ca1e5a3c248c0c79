"""`moodlens train`: train the expression classifier, top to bottom in one file.

A run folder holds config.json, history.csv, curves.png, last.keras (every epoch, with optimizer state),
best.keras (best selection metric) and state.json. `--resume` reloads last.keras and goes on from the next
epoch; data order and augmentation are stateless functions of (seed, epoch, step), so a resumed run trains
on exactly the batches the interrupted one would have.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from moodlens.training.data import FaceDataset, load_fer, read_fer2013, read_ferplus
from moodlens.training.export import keras_inputs
from moodlens.training.labels import FER2013_CLASSES, FERPLUS_HEAD, FOUR, SEVEN, class_set

# Training faces whose statistics set the batch norms of the averaged (EMA) weights every epoch.
NORM_FACES = 4096
# With targets="heads" the net has these two outputs on one trunk (see model.build_classifier).
HEADS: dict[str, tuple[str, ...]] = {"fer2013": FER2013_CLASSES, "ferplus": FERPLUS_HEAD.classes}


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved as config.json)."""

    run_dir: str
    fer2013: str | None = None
    ferplus: str | None = None
    shards: str | None = None  # Parquet face-crop shards from `moodlens spark-prepare`
    classes: str = "7"
    targets: str = "mixed"
    train_split: str = "Training"
    val_split: str = "PublicTest"
    epochs: int = 40
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 2
    label_smoothing: float = 0.1
    class_weight: str = "none"  # none | sqrt | balanced
    width: int = 32
    depth: tuple[int, ...] | None = None  # convolutions per stage (None: model.DEPTH); deeper than --init-from: grown
    dropout: float = 0.4  # before the logits
    stage_dropout: float = 0.1  # stage k drops k times this
    optimizer: str = "adamw"  # adamw | sgd (Nesterov momentum 0.9)
    ema: float = 0.0  # EMA decay of the weights per step (0: off); probes and best.keras use the EMA weights
    seed: int = 1234
    limit: int | None = None  # train on the first N rows only (smoke tests)
    init_from: str | None = None  # fine-tune from a checkpoint (a 7-class net can start a 4-class run)
    # "moodlens": the 48x48 grey VGG-style net (model.py); "faceapi": face-api.js's net (112x112 RGB), fine-tuned
    # from its published weights in `faceapi_dir`, on FER faces upscaled to 112 and copied to RGB
    arch: str = "moodlens"
    faceapi_dir: str | None = None
    # weight of a teacher's output on the same augmented view mixed into each target: the `teacher` model file's
    # (knowledge distillation, Hinton et al. 2015), or with --arch faceapi and no teacher the untouched net's own,
    # so fine-tuning keeps what it knew of real photos ("learning without forgetting", Li & Hoiem 2016)
    distill: float = 0.0
    teacher: str | None = None  # a .tflite model file or a shipped model's name (e.g. photos)
    teacher_flip: bool = False  # the teacher's output averaged over the view and its mirror image
    photos: str | None = None  # a labelled real-photo set (photos-dev labels.csv) probed every epoch, never trained on
    # the FER+ head's loss weight in a two-head run (the FER2013 head's is 1); at 0 the run is a one-head run's
    ferplus_weight: float = 1.0
    extra: dict = field(default_factory=dict)


def class_weights(y: np.ndarray, n_classes: int, mode: str) -> np.ndarray:
    """Per-class loss weights: none, inverse frequency ('balanced') or its square root ('sqrt')."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    if mode == "none":
        return np.ones(n_classes, np.float32)
    inv = counts.sum() / np.maximum(counts, 1) / n_classes
    w = np.sqrt(inv) if mode == "sqrt" else inv
    return (w / (w * counts).sum() * counts.sum()).astype(np.float32)


def load_datasets(cfg: TrainConfig) -> tuple[FaceDataset, FaceDataset, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Train and validation sets, plus FER PublicTest probes (images, labels) for per-epoch metrics."""
    cs = class_set(cfg.classes)
    if cfg.shards:
        from moodlens.jobs.shards import load_shards

        train, val = load_shards(cfg.shards, cs, seed=cfg.seed)
        return train, val, {}
    frame = read_fer2013(cfg.fer2013)
    votes = read_ferplus(cfg.ferplus) if cfg.ferplus else None
    if cfg.targets == "heads" and cs != SEVEN:
        raise ValueError("targets 'heads' trains the 7-class FER2013 head and the FER+ head: use --classes 7")
    train = load_fer(cfg.fer2013, cfg.train_split, cs, targets=cfg.targets, frame=frame, votes=votes)
    val = load_fer(cfg.fer2013, cfg.val_split, cs, targets=cfg.targets, frame=frame, votes=votes)
    probes = {}
    for probe_cs in (FOUR, SEVEN):
        if set(probe_cs.classes) <= set(cs.classes):
            d = load_fer(cfg.fer2013, cfg.val_split, probe_cs, frame=frame)
            probes[f"fer2013_{probe_cs.name}"] = (d.images, d.y)
            if votes is not None:
                d = load_fer(cfg.fer2013, cfg.val_split, probe_cs, targets="ferplus", frame=frame, votes=votes)
                probes[f"ferplus_{probe_cs.name}"] = (d.images, d.y)
    if cfg.photos:
        from moodlens.training.evaluate import photo_probe

        probes["photos_4"] = photo_probe(cfg.photos, rgb_size=112 if cfg.arch == "faceapi" else None)
    if cfg.limit:
        plus = None if train.ferplus_target is None else train.ferplus_target[: cfg.limit]
        train = FaceDataset(train.images[: cfg.limit], train.y[: cfg.limit], train.target[: cfg.limit], cs,
                            ferplus_target=plus)
    return train, val, probes


def make_train_stream(train: FaceDataset, cfg: TrainConfig, start_epoch: int):
    """Batches for epochs start_epoch..epochs-1: per-epoch stateless shuffle and augmentation."""
    import tensorflow as tf

    from moodlens.training.augment import augment_batch

    teacher, file_teacher = None, None
    if cfg.teacher and cfg.distill:
        file_teacher = teacher_model(cfg.teacher, train.class_set.classes, flip=cfg.teacher_flip)
    elif cfg.arch == "faceapi" and cfg.distill:
        from moodlens.training.faceapi import faceapi_classifier

        teacher = faceapi_classifier(cfg.faceapi_dir, train.class_set.classes, name="teacher")
        teacher.trainable = False
    images = tf.constant(train.images[..., None], tf.uint8)
    targets = tf.constant(train.target, tf.float32)
    plus = None if train.ferplus_target is None else tf.constant(train.ferplus_target, tf.float32)
    weights = tf.constant(class_weights(train.y, len(train.class_set), cfg.class_weight))
    n, bs = len(train), cfg.batch_size
    steps = n // bs

    def epoch(e):
        order = tf.random.experimental.stateless_shuffle(tf.range(n), seed=tf.stack([cfg.seed, e]))
        batches = tf.reshape(order[: steps * bs], [steps, bs])
        step_ids = tf.range(steps, dtype=tf.int64)
        return tf.data.Dataset.from_tensor_slices((step_ids, batches)).map(
            lambda s, idx: batch(e, s, idx), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def batch(e, s, idx):
        x = tf.cast(tf.gather(images, idx), tf.float32)
        x = augment_batch(x, tf.stack([cfg.seed + 1, e * 100_000 + s]))
        t = tf.gather(targets, idx)
        if file_teacher is not None:  # the teacher sees the view the student sees
            taught = tf.numpy_function(file_teacher, [x], tf.float32, stateful=False)
            t = (1 - cfg.distill) * t + cfg.distill * tf.ensure_shape(taught, t.shape)
        if cfg.arch == "faceapi":
            from moodlens.training.faceapi import to_faceapi_input

            x = to_faceapi_input(x)
            if teacher is not None:  # the same view through the original net
                t = (1 - cfg.distill) * t + cfg.distill * tf.nn.softmax(teacher(x, training=False))
        w = tf.reduce_sum(t * weights, axis=1)
        if plus is not None:  # rows without a FER+ target are all zeros: no FER+ loss for them
            return x, {"fer2013": t, "ferplus": tf.gather(plus, idx)}
        return x, t, w

    ds = tf.data.Dataset.range(start_epoch, cfg.epochs).flat_map(epoch)
    return ds.prefetch(tf.data.AUTOTUNE), steps


def teacher_model(model: str, classes: tuple[str, ...], flip: bool = False):
    """A LiteRT model file (or a shipped model's name) as a distillation teacher: a function from a batch of
    48x48 grey faces (N, 48, 48, 1) float 0..255 to its probabilities over `classes` (N, C) float32, renormalised
    where it has more classes; with `flip`, the mean of its probabilities on each face and its mirror image (a
    steadier teacher for one more invoke). A teacher with other inputs (the photos model's 112 RGB crop) gets them
    made from the 48x48 face, as FER faces always reach it (classify.crops_from_fer)."""
    from moodlens.engine.classify import ExpressionClassifier, model_file

    net = ExpressionClassifier(model_file(model))
    missing = sorted(set(classes) - set(net.classes))
    if missing:
        raise ValueError(f"{model} predicts {list(net.classes)}: it cannot teach {missing}")
    cols = [net.classes.index(c) for c in classes]

    def predict(x: np.ndarray) -> np.ndarray:
        p = net.predict(x[..., 0])[:, cols].astype(np.float32)
        if flip:
            p = (p + net.predict(x[:, :, ::-1, 0])[:, cols].astype(np.float32)) / 2
        return p / p.sum(axis=1, keepdims=True)
    return predict


def lr_schedule(cfg: TrainConfig, steps_per_epoch: int):
    """Linear warm-up to cfg.lr, then cosine decay to 1% of it at the last step of the last epoch."""
    import keras

    total = cfg.epochs * steps_per_epoch
    warmup = min(cfg.warmup_epochs * steps_per_epoch, total // 2)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=cfg.lr / 10, decay_steps=max(total - warmup, 1), alpha=0.01,
        warmup_target=cfg.lr, warmup_steps=warmup)


def load_source(path: str, faces: np.ndarray | None = None):
    """A checkpoint to start from, and its heads {logits layer: classes}: a training checkpoint (.keras, its
    classes from the run's config.json) or a shipped .tflite file (its weights recovered, see recover.py)."""
    from moodlens.training.evaluate import keras_model_classes
    from moodlens.training.model import load_network

    if path.endswith(".tflite"):
        from moodlens.training.recover import classifier_from_tflite

        source = classifier_from_tflite(path, faces)
        card = json.loads(Path(path).with_suffix(".json").read_text())
        return source, {"logits": tuple(card["architecture"]["trained_classes"])}
    source = load_network(path)
    if isinstance(source.output, dict):
        return source, {f"{h}_logits": HEADS[h] for h in source.output}
    return source, {"logits": keras_model_classes(Path(path), source.output_shape[-1])}


def init_from_checkpoint(path: str, classes: tuple[str, ...] | dict[str, tuple[str, ...]], dropout: float = 0.4,
                         stage_dropout: float = 0.1, width: int | None = None, faces: np.ndarray | None = None,
                         depth: tuple[int, ...] | None = None):
    """A fresh network over `classes` (or {head: classes}) whose trunk and logits are the checkpoint's.

    With `depth` deeper than the checkpoint's in some stage, the stage's extra convolutions start as the
    identity (Net2DeeperNet, Chen et al. 2016): a centre-tap kernel after a ReLU, its batch norm set from `faces`
    to give back its input in training mode too, so the grown net starts out computing the checkpoint's function.

    Each logits column is copied from the checkpoint's column of the same class (the head of the same name if
    the checkpoint has one), so the new model starts out giving exactly the old model's restricted output. A
    single-head model must have all its classes in the checkpoint; a head of a two-head model may have classes
    the checkpoint lacks (FER+'s contempt), which start at zero weight and the lowest bias.
    """

    from moodlens.training.model import build_classifier, stage_depth

    source, source_heads = load_source(path, faces)
    source_width = source.get_layer("stage1_conv1").filters
    if width is not None and width != source_width:
        raise ValueError(f"{path} has width {source_width}: start from it with --width {source_width}")
    heads = classes if isinstance(classes, dict) else None
    targets = {f"{h}_logits": c for h, c in heads.items()} if heads else {"logits": tuple(classes)}
    if not heads:
        missing = set(classes) - set(next(iter(source_heads.values())))
        if missing:
            raise ValueError(f"{path} predicts {list(next(iter(source_heads.values())))}: it cannot start a run "
                             f"over {sorted(missing)}")
    source_depth = stage_depth(source)
    depth = tuple(depth or source_depth)  # config.json gives a list
    if any(d < s for d, s in zip(depth, source_depth, strict=True)):
        raise ValueError(f"{path} has depth {source_depth}: a run from it can add convolutions, not remove them")
    model = build_classifier({h: len(c) for h, c in heads.items()} if heads else len(classes), width=source_width,
                             dropout=dropout, stage_dropout=stage_dropout, depth=depth)
    source_names = {layer.name for layer in source.layers}
    grown = []
    for layer in model.layers:
        if not layer.weights or layer.name in targets:
            continue
        if layer.name in source_names:
            layer.set_weights(source.get_layer(layer.name).get_weights())
        elif "_conv" in layer.name:
            grown.append(layer)
            kernel = np.zeros(layer.kernel.shape, np.float32)
            kernel[1, 1] = np.eye(layer.filters, dtype=np.float32)
            layer.set_weights([kernel])
    if grown:
        from moodlens.training.recover import set_norm_statistics

        if faces is None:
            raise ValueError("growing a network needs faces to set its new batch norms from")
        set_norm_statistics(model, grown, [model.get_layer(c.name.replace("_conv", "_bn")) for c in grown], faces)
    for name, head_classes in targets.items():
        from_name = name if name in source_heads else next(iter(source_heads))
        kernel, bias = source.get_layer(from_name).get_weights()
        new_kernel = np.zeros((kernel.shape[0], len(head_classes)), np.float32)
        new_bias = np.full(len(head_classes), bias.min(), np.float32)
        for j, c in enumerate(head_classes):
            if c in source_heads[from_name]:
                i = source_heads[from_name].index(c)
                new_kernel[:, j], new_bias[j] = kernel[:, i], bias[i]
        model.get_layer(name).set_weights([new_kernel, new_bias])
    return model


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int):
    import keras

    ema = {"use_ema": True, "ema_momentum": cfg.ema} if cfg.ema else {}
    schedule = lr_schedule(cfg, steps_per_epoch)
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay, **ema)
    if cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay, **ema)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose adamw or sgd")


def build_and_compile(cfg: TrainConfig, train_set: FaceDataset, steps_per_epoch: int):
    import keras

    from moodlens.training.model import build_classifier, soft_cross_entropy

    keras.utils.set_random_seed(cfg.seed)
    smoothed = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=cfg.label_smoothing)
    accuracy = keras.metrics.CategoricalAccuracy(name="accuracy")
    classes = HEADS if cfg.targets == "heads" else train_set.class_set.classes
    if cfg.arch == "faceapi":
        from moodlens.training.faceapi import faceapi_classifier

        if cfg.targets == "heads" or cfg.init_from:
            raise ValueError("--arch faceapi starts from face-api's weights with one head: no --init-from/heads")
        model = faceapi_classifier(cfg.faceapi_dir, classes)
    elif cfg.init_from:  # a few thousand training faces set the batch norms of a recovered .tflite network
        model = init_from_checkpoint(cfg.init_from, classes, cfg.dropout, cfg.stage_dropout, cfg.width,
                                     faces=train_set.images[:4096], depth=cfg.depth)
    else:
        model = build_classifier({h: len(c) for h, c in HEADS.items()} if cfg.targets == "heads" else len(classes),
                                 width=cfg.width, dropout=cfg.dropout, stage_dropout=cfg.stage_dropout,
                                 depth=cfg.depth)
    if cfg.targets == "heads":
        # the FER+ head learns the vote distribution itself: no smoothing on top of it; rows without FER+ votes
        # have an all-zero target, which only soft_cross_entropy leaves truly without a gradient
        loss = {"fer2013": smoothed, "ferplus": soft_cross_entropy}
        metrics = {"fer2013": [accuracy]}
    else:
        loss, metrics = smoothed, [accuracy]
    weights = {"fer2013": 1.0, "ferplus": cfg.ferplus_weight} if cfg.targets == "heads" else None
    model.compile(optimizer=make_optimizer(cfg, steps_per_epoch), loss=loss, loss_weights=weights, metrics=metrics)
    return model


def swap_ema_weights(model) -> None:
    """Exchange the model's trainable weights with the optimizer's moving averages (call twice to undo)."""
    averages = getattr(model.optimizer, "_model_variables_moving_average", None)
    if not averages:
        return
    for var, avg in zip(model.trainable_variables, averages, strict=True):
        current = var.numpy()
        var.assign(avg)
        avg.assign(current)


def norm_layers(model) -> list:
    import keras

    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def refresh_norm_statistics(model, faces: np.ndarray, batch_size: int = 256) -> list[tuple[np.ndarray, np.ndarray]]:
    """Re-estimate every batch norm's moving mean and variance for the weights the model holds now, as the mean of
    per-batch statistics over `faces` (N, 48, 48) ("precise BN", Wu & Johnson 2021), dropout off as at inference.

    Why: the optimizer's EMA averages the trainable weights only, so the averaged net would be normalised with
    statistics gathered on the live weights, which at a high learning rate no longer fit it (a from-scratch run
    read 29% of PublicTest so, against 44% with its own statistics). Returns the statistics it replaced, for
    `restore_norm_statistics`."""
    import keras

    norms = norm_layers(model)
    saved = [(n.moving_mean.numpy(), n.moving_variance.numpy()) for n in norms]
    if not norms:
        return saved
    drops = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    momenta, rates = [n.momentum for n in norms], [d.rate for d in drops]
    for d in drops:
        d.rate = 0.0
    x = keras_inputs(model, faces)
    for k, start in enumerate(range(0, len(faces), batch_size)):
        for n in norms:  # moving = moving * k/(k+1) + batch/(k+1): the running mean of the k+1 batches so far
            n.momentum = k / (k + 1)
        model(x[start:start + batch_size], training=True)
    for n, m in zip(norms, momenta, strict=True):
        n.momentum = m
    for d, r in zip(drops, rates, strict=True):
        d.rate = r
    return saved


def restore_norm_statistics(model, saved: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Put back the moving statistics `refresh_norm_statistics` replaced (the live weights' own)."""
    for n, (mean, var) in zip(norm_layers(model), saved, strict=True):
        n.moving_mean.assign(mean)
        n.moving_variance.assign(var)


def probe_accuracy(model, probes: dict[str, tuple[np.ndarray, np.ndarray]], classes: tuple[str, ...]) -> dict:
    """Accuracy on each FER probe, restricting the model's output to the probe's classes.

    A two-head net is probed through both heads: `val_<probe>_acc` from the head of the probe's own labels
    (FER2013 or FER+), `val_<probe>_via_<head>_acc` from the other one.
    """
    out = {}
    for name, (images, y) in probes.items():
        probe_classes = FOUR.classes if name.endswith("_4") else FER2013_CLASSES
        logits = model.predict(keras_inputs(model, images), batch_size=256, verbose=0)
        outputs = logits if isinstance(logits, dict) else {None: logits}
        for head, head_logits in outputs.items():
            head_classes = classes if head is None else HEADS[head]
            cols = [head_classes.index(c) for c in probe_classes]
            key = f"val_{name}_acc" if head in (None, name.split("_")[0]) else f"val_{name}_via_{head}_acc"
            out[key] = float((head_logits[:, cols].argmax(1) == y).mean())
    return out


def plot_curves(history_csv: Path, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    h = pd.read_csv(history_csv)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for col in ("loss", "val_loss"):
        if col in h:
            ax1.plot(h["epoch"] + 1, h[col], label=col)
    for col in [c for c in h.columns if c.endswith("acc") or c.endswith("accuracy")]:
        ax2.plot(h["epoch"] + 1, h[col], label=col)
    ax1.set(title="loss", xlabel="epoch")
    ax2.set(title="accuracy", xlabel="epoch")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def make_callbacks(cfg: TrainConfig, run: Path, probes, classes, start_best: float, norm_faces: np.ndarray):
    import keras

    # select on FER2013-label accuracy where there are FER probes (7 classes if the run has them)
    monitor = cfg.extra.get("monitor") or next(
        (f"val_{p}_acc" for p in ("fer2013_7", "fer2013_4") if p in probes), "val_accuracy")

    class EpochEnd(keras.callbacks.Callback):
        """Probe metrics, checkpoints, state and curves, in that order, at the end of every epoch."""

        best = start_best

        def on_epoch_begin(self, epoch, logs=None):
            # Dropout's seed-generator counters are not restored from a checkpoint, so pin them per epoch:
            # a resumed run then draws the same dropout masks as an uninterrupted one.
            for i, layer in enumerate(self.model.layers):
                gen = getattr(layer, "seed_generator", None)
                if gen is not None:
                    gen.state.assign(np.array([cfg.seed + i, epoch * 10_000_000], dtype=gen.state.dtype))

        def on_epoch_end(self, epoch, logs=None):
            if cfg.ema and monitor.startswith("val_fer2013_7"):  # the raw weights too, to see what EMA gives
                raw = probe_accuracy(self.model, {"fer2013_7": probes["fer2013_7"]}, classes)
                logs["val_fer2013_7_raw_acc"] = raw["val_fer2013_7_acc"]
            swap_ema_weights(self.model)  # probe and keep the averaged weights (no-op without EMA)
            live_norms = refresh_norm_statistics(self.model, norm_faces) if cfg.ema else None
            logs.update(probe_accuracy(self.model, probes, classes))
            logs["lr"] = float(keras.ops.convert_to_numpy(
                self.model.optimizer.learning_rate))
            write_history_row(run / "history.csv", epoch, logs)
            score = logs.get(monitor, logs.get("val_accuracy", 0.0))
            if score > self.best:
                self.best = score
                self.model.save(run / "best.keras")
            if cfg.extra.get("keep_epochs"):  # every epoch's (averaged) weights, to choose on more than one probe
                self.model.save(run / f"epoch-{epoch + 1:03d}.keras")
            swap_ema_weights(self.model)
            if live_norms:
                restore_norm_statistics(self.model, live_norms)
            self.model.save(run / "last.tmp.keras")
            os.replace(run / "last.tmp.keras", run / "last.keras")
            (run / "state.json").write_text(json.dumps(
                {"epochs_done": epoch + 1, "best": self.best, "monitor": monitor}, indent=1))
            plot_curves(run / "history.csv", run / "curves.png")

    return [EpochEnd()]


def write_history_row(path: Path, epoch: int, logs: dict) -> None:
    """Append one epoch to history.csv. The header comes from the first row; later rows are written to its columns
    (blank where a metric is missing, a new metric left out), so a run resumed under code that logs other metrics
    keeps every value under its own name."""
    row = {"epoch": epoch, **{k: float(v) for k, v in sorted(logs.items())}}
    new = not path.exists()
    fields = list(row) if new else path.read_text().splitlines()[0].split(",")
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="", extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)


def train(cfg: TrainConfig, resume: bool = False, verbose: int = 1, stop_after: int | None = None,
          epochs: int | None = None) -> Path:
    """Train (or resume) the run in cfg.run_dir; returns the run folder.

    `stop_after` ends this call after that many epochs (the run stays resumable), for time-boxed sessions.
    `epochs` on resume lengthens or shortens the run: the learning-rate schedule is rebuilt for the new length
    (the resumed run is then no longer identical to an uninterrupted one). On resume the rest of `cfg` is the
    run's own config.json, except `extra["keep_epochs"]`, which can be switched on.
    """
    import tensorflow as tf

    from moodlens.training.model import load_network

    run = Path(cfg.run_dir)
    if resume:
        saved = TrainConfig(**json.loads((run / "config.json").read_text()))
        if epochs is not None:
            saved.epochs = epochs
        if cfg.extra.get("keep_epochs"):  # --keep-epochs on a resume: from here on
            saved.extra["keep_epochs"] = True
        cfg = saved
        (run / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
        state = json.loads((run / "state.json").read_text())
        start, best = state["epochs_done"], state["best"]
    else:
        if (run / "state.json").exists():
            raise FileExistsError(f"{run} already holds a run: pass --resume to continue it, or pick a new folder")
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
        start, best = 0, -1.0
    if cfg.extra.get("deterministic"):
        tf.config.experimental.enable_op_determinism()

    train_set, val_set, probes = load_datasets(cfg)
    stream, steps = make_train_stream(train_set, cfg, start)
    if start > 0:
        model = load_network(run / "last.keras", compile=True)
        if epochs is not None:
            model.optimizer.learning_rate = lr_schedule(cfg, steps)
        # history rows after the checkpoint (an epoch that crashed mid-write) are dropped
        trim_history(run / "history.csv", start)
    else:
        model = build_and_compile(cfg, train_set, steps)
    if start >= cfg.epochs:
        return run
    # a two-head run is validated by its probes (both heads, both label sets) alone
    val = None if cfg.targets == "heads" else (keras_inputs(model, val_set.images),
                                               np.eye(len(val_set.class_set), dtype=np.float32)[val_set.y])
    end = cfg.epochs if stop_after is None else min(cfg.epochs, start + stop_after)
    model.fit(stream, epochs=end, initial_epoch=start, steps_per_epoch=steps, validation_data=val,
              callbacks=make_callbacks(cfg, run, probes, train_set.class_set.classes, best,
                                       norm_faces=train_set.images[:NORM_FACES]), verbose=verbose)
    return run


def trim_history(path: Path, epochs_done: int) -> None:
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[: epochs_done + 1]))
