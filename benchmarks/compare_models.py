"""Two or more expression models on one FER2013 split, face by face: is the second one better than the first?

    python benchmarks/compare_models.py BASELINE.tflite OTHER.tflite [...] [--classes 7] [--split PublicTest]
        [--fer2013 ../shared/data/fer2013/fer2013.csv.gz] [--ferplus ../shared/data/ferplus/fer2013new.csv] [--flip]

A model is a .tflite file, a shipped name (photos), or a .keras checkpoint (HEAD after a colon picks a two-head
net's head: run/best.keras:ferplus). For each: accuracy on FER2013's labels, on the split without the images also
in Training (dedup), on FER+ majority labels; the faces it gets right that the first model gets wrong and the
reverse, with the exact McNemar p-value. `--flip` adds each model averaged with its mirror image, and every run
ends with the average of all the models (a geometric mean of their probabilities): what an ensemble, or a teacher
made of them, would read.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
from eval_fusion import flip_averaged, mcnemar_p
from scipy.special import softmax

from moodlens.training.data import load_fer, read_fer2013, read_ferplus
from moodlens.training.evaluate import Predictor, restrict, training_duplicates
from moodlens.training.labels import class_set


def probabilities(model: str, classes: str) -> Callable[[np.ndarray], np.ndarray]:
    """`model` ("path[:head]"), loaded once, as a function from faces to (N, C) probabilities over `classes`'."""
    path, _, head = model.partition(":") if model.endswith((":fer2013", ":ferplus")) else (model, "", "")
    predictor = Predictor(path, classes=classes, head=head or None)
    cs = class_set(classes)

    def run(x: np.ndarray) -> np.ndarray:
        scores = restrict(predictor.scores(x), predictor.classes, cs)
        return softmax(scores, axis=1) if predictor.logits else scores / scores.sum(axis=1, keepdims=True)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--classes", default="7")
    parser.add_argument("--split", default="PublicTest")
    parser.add_argument("--fer2013", default="../shared/data/fer2013/fer2013.csv.gz")
    parser.add_argument("--ferplus", default="../shared/data/ferplus/fer2013new.csv")
    parser.add_argument("--flip", action="store_true", help="also each model averaged with its mirror image")
    args = parser.parse_args()

    cs = class_set(args.classes)
    frame = read_fer2013(args.fer2013)
    fer = load_fer(args.fer2013, args.split, cs, frame=frame)
    plus = load_fer(args.fer2013, args.split, cs, targets="ferplus", frame=frame, votes=read_ferplus(args.ferplus))
    keep = ~np.isin(fer.source_rows, training_duplicates(frame, args.split))
    print(f"{args.split}, {args.classes} classes: {len(fer.y)} faces with FER2013 labels ({keep.sum()} dedup), "
          f"{len(plus.y)} with a FER+ majority")

    results: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    names = [Path(m).name for m in args.models]
    for model, name in zip(args.models, names, strict=True):
        name = name if names.count(name) == 1 else model  # two runs' expression-4.tflite: tell them apart
        run = probabilities(model, args.classes)
        results[name] = (run(fer.images), run(plus.images))
        if args.flip:
            results[name + " +flip"] = (flip_averaged(run, fer.images), flip_averaged(run, plus.images))
    if len(args.models) > 1:
        singles = [v for k, v in results.items() if not k.endswith("+flip")]
        results["average of all"] = tuple(softmax(np.mean([np.log(np.clip(s[i], 1e-7, 1)) for s in singles], axis=0),
                                                  axis=1) for i in (0, 1))

    base_right = None
    print(f"{'model':<40}{'FER2013':>9}{'dedup':>8}{'FER+':>8}   vs the first: gained, lost (McNemar p; dedup)")
    for name, (p_fer, p_plus) in results.items():
        right = p_fer.argmax(1) == fer.y
        line = f"{name[-40:]:<40}{right.mean():>9.4f}{right[keep].mean():>8.4f}" \
               f"{(p_plus.argmax(1) == plus.y).mean():>8.4f}"
        if base_right is None:
            base_right = right
        else:
            gained, lost = right & ~base_right, ~right & base_right
            g, lo, gd, ld = (int(m.sum()) for m in (gained, lost, gained[keep], lost[keep]))
            line += f"   +{g} -{lo} (p {mcnemar_p(g, lo):.2g}; +{gd} -{ld}, p {mcnemar_p(gd, ld):.2g})"
        print(line)


if __name__ == "__main__":
    main()
