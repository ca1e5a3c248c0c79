"""Do FER+ and real photos agree on where each class ends? A bias per class fitted to FER+ labels, applied to photos.

    python benchmarks/eval_label_bias.py [--weights 0 0.25 0.5 0.6]

For moodlens's 4-class file alone (w = 0) and fused with face-api.js's net as published (weight w on face-api,
eval_fusion.fuse's weighted geometric mean): fit one additive bias per class to the fused log-scores on
PublicTest's FER+ majority labels (maximum likelihood), then read PublicTest and photos-dev (140 single faces,
validation only, through the engine's detector and crops; eval_fusion.photo_crops) with and without it. If the
two label sets agreed, the bias would help both. Aggregates only; nothing derived from photos-dev is written.
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np
from eval_fusion import FACEAPI_DIR, FACEAPI_SIZE, SHARED, faceapi_to4, fuse, in_chunks, keras_runner, photo_crops
from reference import machine
from scipy.optimize import minimize


def fit_bias(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The per-class bias b minimising the cross-entropy of softmax(scores + b) against labels y."""
    rows = np.arange(len(y))

    def nll(b: np.ndarray) -> float:
        z = scores + b
        z = z - z.max(axis=1, keepdims=True)
        return float(-(z[rows, y] - np.log(np.exp(z).sum(axis=1))).mean())

    b = minimize(nll, np.zeros(scores.shape[1])).x
    return b - b.mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.6])
    args = parser.parse_args()
    from moodlens.engine.analyzer import Analyzer
    from moodlens.engine.classify import CropSpec, crops_from_fer
    from moodlens.training.data import load_fer, read_fer2013
    from moodlens.training.faceapi import load_faceapi_expression_net
    from moodlens.training.labels import class_set

    cv2.setNumThreads(1)
    print(f"machine: {machine()}")
    analyzer = Analyzer(classes="4", num_threads=1)
    faceapi = keras_runner(load_faceapi_expression_net(FACEAPI_DIR))
    photos = photo_crops(SHARED / "photos-dev" / "labels.csv", [1.2], analyzer)
    photo_ml = analyzer.classifier.predict(photos.crops48).astype(np.float64)
    photo_fa = faceapi_to4(faceapi(photos.crops112[1.2]))
    fer = SHARED / "fer2013" / "fer2013.csv.gz"
    plus = load_fer(fer, "PublicTest", class_set("4"), ferplus=SHARED / "ferplus" / "fer2013new.csv",
                    targets="ferplus", frame=read_fer2013(fer))
    fer_ml = in_chunks(analyzer.classifier.predict, plus.images).astype(np.float64)
    fer_fa = faceapi_to4(faceapi(crops_from_fer(plus.images, CropSpec(FACEAPI_SIZE, grey=False))))

    def accuracy(scores: np.ndarray, y: np.ndarray, found: np.ndarray | None = None) -> float:
        right = scores.argmax(axis=1) == y
        return float((right if found is None else right & found).mean())

    print("\n| face-api weight | FER+ majority (PublicTest) | + FER+ bias | photos-dev | + FER+ bias | bias "
          "(angry, happy, neutral, sad) |\n|---|---|---|---|---|---|")
    for w in args.weights:
        s_fer, s_photo = fuse(fer_ml, fer_fa, w, "log"), fuse(photo_ml, photo_fa, w, "log")
        b = fit_bias(s_fer, plus.y)
        print(f"| {w:g} | {accuracy(s_fer, plus.y):.3f} | {accuracy(s_fer + b, plus.y):.3f} | "
              f"{accuracy(s_photo, photos.y, photos.found):.3f} | {accuracy(s_photo + b, photos.y, photos.found):.3f}"
              f" | {', '.join(f'{v:+.2f}' for v in b)} |")


if __name__ == "__main__":
    main()
