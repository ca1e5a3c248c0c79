"""Loaders: FER2013 CSV (plain and gz), FER+ votes by line position, label sets, image folders."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fer_fixtures import synthetic_faces, write_fer_csv, write_ferplus_csv
from moodlens.training.data import ferplus_majority, load_fer, load_image_folder, read_fer2013, split_names
from moodlens.training.labels import FERPLUS_COLUMNS, FOUR, SEVEN, class_set


def votes(**named: int) -> list[int]:
    return [named.get(c, 0) for c in FERPLUS_COLUMNS]


@pytest.mark.parametrize("name", ["fer.csv", "fer.csv.gz"])
def test_read_fer2013_plain_and_gzip(tmp_path, name):
    path = write_fer_csv(tmp_path / name, [0, 3, 6], ["Training", "Training", "PublicTest"])
    frame = read_fer2013(path)
    assert len(frame) == 3
    assert frame["image"][0].shape == (48, 48) and frame["image"][0].dtype == np.uint8
    assert np.array_equal(frame["image"][1], synthetic_faces(np.array([0, 3, 6]))[1])


def test_read_fer2013_rejects_wrong_columns(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="missing columns"):
        read_fer2013(tmp_path / "x.csv")


def test_four_class_set_drops_other_emotions(tmp_path):
    # disgust (1), fear (2) and surprise (5) are not among the four classes
    path = write_fer_csv(tmp_path / "f.csv", [0, 1, 2, 3, 4, 5, 6], ["Training"] * 7)
    ds = load_fer(path, "Training", FOUR)
    assert [FOUR.classes[i] for i in ds.y] == ["angry", "happy", "sad", "neutral"]
    assert list(ds.source_rows) == [0, 3, 4, 6]
    assert np.allclose(ds.target.sum(1), 1)


def test_seven_class_set_keeps_fer2013_codes(tmp_path):
    path = write_fer_csv(tmp_path / "f.csv", [0, 1, 2, 3, 4, 5, 6], ["Training"] * 7)
    ds = load_fer(path, "Training", SEVEN)
    assert list(ds.y) == list(range(7))


def test_any_split_name_works_and_missing_split_is_a_clear_error(tmp_path):
    path = write_fer_csv(tmp_path / "f.csv", [3, 4], ["Training", "SecretTest"])
    assert split_names(path) == ["SecretTest", "Training"]
    assert len(load_fer(path, "SecretTest", FOUR)) == 1
    with pytest.raises(ValueError, match="no rows with Usage == 'Nope'"):
        load_fer(path, "Nope", FOUR)


def test_ferplus_majority_rule_matches_ferplus_repo():
    v = np.array([
        votes(happiness=6, neutral=4),          # happiness: 6 > 10/2
        votes(happiness=5, neutral=5),          # tie: no majority
        votes(happiness=5, neutral=4, anger=1),  # single vote dropped: 5 > 9/2
        votes(NF=10),                           # not a face
        votes(unknown=6, sadness=4),            # majority unknown
    ])
    got = [FERPLUS_COLUMNS[m] if m >= 0 else None for m in ferplus_majority(v)]
    assert got == ["happiness", None, "happiness", "NF", "unknown"]


def test_ferplus_joined_by_line_and_unlabelled_rows_dropped(tmp_path):
    usages = ["Training"] * 5
    fer = write_fer_csv(tmp_path / "f.csv", [3, 3, 0, 6, 4], usages)
    plus = write_ferplus_csv(tmp_path / "p.csv", [
        votes(happiness=10), votes(NF=10), votes(anger=7, sadness=3), votes(happiness=5, neutral=5),
        votes(surprise=9, sadness=1)], usages)
    hard = load_fer(fer, "Training", FOUR, ferplus=plus, targets="ferplus")
    # row 1 not a face, row 3 no majority, row 4 majority surprise (not one of the four)
    assert list(hard.source_rows) == [0, 2]
    assert [FOUR.classes[i] for i in hard.y] == ["happy", "angry"]
    soft = load_fer(fer, "Training", FOUR, ferplus=plus, targets="ferplus-soft")
    assert np.allclose(soft.target[1], [0.7, 0, 0, 0.3])
    mixed = load_fer(fer, "Training", FOUR, ferplus=plus, targets="mixed")
    assert np.allclose(mixed.target[1], [0.85, 0, 0, 0.15])  # FER2013 says angry too


def test_ferplus_row_count_must_match(tmp_path):
    fer = write_fer_csv(tmp_path / "f.csv", [3, 3], ["Training"] * 2)
    plus = write_ferplus_csv(tmp_path / "p.csv", [votes(happiness=10)], ["Training"])
    with pytest.raises(ValueError, match="must align"):
        load_fer(fer, "Training", FOUR, ferplus=plus, targets="ferplus")


def test_class_set_lookup():
    assert class_set(4) is FOUR and class_set("7") is SEVEN
    with pytest.raises(ValueError):
        class_set("5")


def test_image_folder_of_face_crops(tmp_path):
    for label, shade in (("happy", 200), ("sad", 50), ("surprised", 120)):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.new("RGB", (100 + i * 10, 90), (shade, shade, shade)).save(tmp_path / label / f"{i}.png")
    (tmp_path / "happy" / "broken.jpg").write_bytes(b"not an image")
    ds = load_image_folder(tmp_path, FOUR, detect_faces=False)
    assert ds.images.shape == (6, 48, 48)
    assert ds.counts() == {"angry": 0, "happy": 3, "neutral": 0, "sad": 3}
    assert abs(int(ds.images[0].mean()) - 200) <= 2


def test_ferplus_head_targets_follow_ferplus_crossentropy_mode():
    from moodlens.training.data import ferplus_head_targets

    # columns: neutral happiness surprise sadness anger disgust fear contempt unknown NF
    votes = np.array([
        [0, 8, 2, 0, 0, 0, 0, 0, 0, 0],  # clear happy: the top emotion already holds 75% of the votes
        [4, 0, 3, 3, 0, 0, 0, 0, 0, 0],  # three emotions needed to reach 75%
        [5, 0, 0, 4, 1, 0, 0, 0, 0, 0],  # neutral/sad split; the single anger vote is dropped
        [0, 0, 0, 0, 0, 0, 0, 0, 2, 8],  # not a face: no target
        [0, 0, 0, 0, 0, 0, 0, 0, 6, 4],  # unknown wins: no target
        [2, 2, 2, 2, 2, 0, 0, 0, 0, 0],  # five-way tie: too many emotions, no target
        [0, 0, 0, 0, 0, 0, 0, 10, 0, 0],  # contempt is a class of the FER+ head
    ], np.float64)
    t = ferplus_head_targets(votes)
    assert t.shape == (7, 8)
    assert np.allclose(t[0], [0, 1, 0, 0, 0, 0, 0, 0])
    assert np.allclose(t[1], [0.4, 0, 0.3, 0.3, 0, 0, 0, 0])
    assert np.allclose(t[2], [5 / 9, 0, 0, 4 / 9, 0, 0, 0, 0])
    assert not t[3].any() and not t[4].any() and not t[5].any()
    assert t[6, 7] == 1


def test_heads_targets_keep_every_training_row(tmp_path):
    from fer_fixtures import make_fer_pair
    from moodlens.training.data import load_fer
    from moodlens.training.labels import SEVEN

    fer, plus = make_fer_pair(tmp_path)
    ds = load_fer(fer, "Training", SEVEN, ferplus=plus, targets="heads")
    assert len(ds) == 280 and ds.ferplus_target.shape == (280, 8)
    assert np.allclose(ds.target.sum(1), 1)
