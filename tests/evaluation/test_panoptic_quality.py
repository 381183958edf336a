"""Panoptic quality: one hand-built case per COCO rule, for both the numpy
core of the command (through the COCO-format writer) and the streaming TF
statistics, with TP/FP/FN and PQ worked out by hand."""

import numpy as np
import pytest
import tensorflow as tf

from max_deeplab_tf.data import dataset_info
from max_deeplab_tf.evaluation import coco_format
from max_deeplab_tf.evaluation import panoptic_quality
from max_deeplab_tf.evaluation import streaming

# Classes: 0 void, 1 and 2 things, 3 and 4 stuff. Ids: class * 100 + instance;
# thing instance 0 is crowd. "V" is void.
DESCRIPTOR = dataset_info.DatasetDescriptor(
    name="pq_test", num_classes=5, ignore_label=0, label_divisor=100,
    thing_class_ids=(1, 2))
V = 0


def numpy_stats(gt, pred):
    """Statistics through the command's path: COCO ids + segments_info."""
    gt_rgb, gt_segments = coco_format.panoptic_to_coco(np.array(gt),
                                                       DESCRIPTOR, True)
    pred_rgb, pred_segments = coco_format.panoptic_to_coco(np.array(pred),
                                                           DESCRIPTOR)
    stats = panoptic_quality.image_statistics(
        panoptic_quality.rgb_to_id(gt_rgb), {s["id"]: s for s in gt_segments},
        panoptic_quality.rgb_to_id(pred_rgb),
        {s["id"]: s for s in pred_segments})
    return {c: tuple(r) for c, r in stats.items() if r[1:].any()}


def tf_stats(gt, pred):
    batch = streaming.panoptic_statistics(
        tf.constant([gt]), tf.constant([pred]), DESCRIPTOR.num_classes,
        DESCRIPTOR.label_divisor, DESCRIPTOR.ignore_label,
        DESCRIPTOR.thing_class_ids)
    arrays = {k: v.numpy() for k, v in batch.items()}
    out = {}
    for c in range(DESCRIPTOR.num_classes):
        row = tuple(float(arrays[k][c]) for k in streaming.STATISTICS)
        if any(row[1:]):
            out[c] = row
    return out, streaming.result_from_statistics(arrays, DESCRIPTOR)


def check(gt, pred, expected_stats, expected_all_pq, expected_n):
    """expected_stats: class -> (IoU sum, TP, FP, FN)."""
    got_np = numpy_stats(gt, pred)
    got_tf, result = tf_stats(gt, pred)
    for got in (got_np, got_tf):
        assert sorted(got) == sorted(expected_stats)
        for c, row in expected_stats.items():
            np.testing.assert_allclose(got[c], row, rtol=1e-6)
    assert result["All"]["n"] == expected_n
    assert result["All"]["pq"] == pytest.approx(expected_all_pq, abs=1e-6)
    summary = panoptic_quality.summarize(
        {c: np.array(r) for c, r in got_np.items()},
        {1: True, 2: True, 3: False, 4: False})
    assert summary["All"]["pq"] == pytest.approx(expected_all_pq, abs=1e-6)
    return result


def test_iou_exactly_half_does_not_match():
    # gt segment of 4 pixels; each prediction covers 2: IoU 2/4 = 0.5.
    gt = [[101, 101, 101, 101]]
    pred = [[101, 101, 102, 102]]
    # TP 0, FP 2, FN 1: PQ 0.
    check(gt, pred, {1: (0.0, 0, 2, 1)}, 0.0, 1)


def test_iou_just_above_half_matches():
    # IoU 3/5 = 0.6: TP 1 (IoU 0.6), the other prediction FP.
    gt = [[101, 101, 101, 101, 101]]
    pred = [[101, 101, 101, 102, 102]]
    # PQ = 0.6 / (1 + 0.5 * 1) = 0.4; SQ 0.6; RQ 2/3.
    result = check(gt, pred, {1: (0.6, 1, 1, 0)}, 0.4, 1)
    assert result["All"]["sq"] == pytest.approx(0.6)
    assert result["All"]["rq"] == pytest.approx(2 / 3)


def test_void_pixels_are_removed_from_the_union():
    # Prediction: 5 pixels, 3 on void. Union without the void part is
    # 5 + 2 - 2 - 3 = 2 -> IoU 1 (it would be 2/5 = 0.4, no match, with void).
    gt = [[V, V, V, 301, 301]]
    pred = [[301, 301, 301, 301, 301]]
    check(gt, pred, {3: (1.0, 1, 0, 0)}, 1.0, 1)


def test_false_positive_exactly_half_on_void_is_counted():
    # Class-3 prediction of 4 pixels, 2 on void (0.5, not > 0.5): FP. The gt
    # class-4 segment is missed: FN.
    gt = [[V, V, 401, 401]]
    pred = [[301, 301, 301, 301]]
    check(gt, pred, {3: (0.0, 0, 1, 0), 4: (0.0, 0, 0, 1)}, 0.0, 2)


def test_false_positive_just_over_half_on_void_is_not_counted():
    # 3 of 5 pixels on void: ignored; class 3 is then absent from both
    # sides and not averaged in (n = 1).
    gt = [[V, V, V, 401, 401]]
    pred = [[301, 301, 301, 301, 301]]
    check(gt, pred, {4: (0.0, 0, 0, 1)}, 0.0, 1)


def test_void_plus_same_class_crowd_ignores_the_prediction():
    # Prediction 101 (4 px): 2 on class-1 crowd (100) + 1 on void = 3/4:
    # ignored. Crowd is never a false negative. Stuff 300: inter 2, union
    # 3 + 2 - 2 = 3 -> IoU 2/3, TP.
    gt = [[100, V, 100, 300, 300, 300]]
    pred = [[101, 101, 101, 101, 300, 300]]
    check(gt, pred, {3: (2 / 3, 1, 0, 0)}, 2 / 3, 1)


def test_crowd_plus_void_at_half_is_counted():
    # 1 crowd + 1 void of 4 pixels = 0.5: the prediction is a FP.
    gt = [[100, V, 300, 300]]
    pred = [[101, 101, 101, 101]]
    # gt 300 (2 px) is missed by class 3: FN. pq 0 for both classes.
    check(gt, pred, {1: (0.0, 0, 1, 0), 3: (0.0, 0, 0, 1)}, 0.0, 2)


def test_crowd_of_another_class_does_not_excuse_a_prediction():
    # Class-1 prediction fully on class-2 crowd: a FP of class 1; the crowd
    # itself is no FN. Stuff 300 matched with IoU 1.
    gt = [[200, 200, 200, 300]]
    pred = [[101, 101, 101, 300]]
    # PQ class 1 = 0, class 3 = 1 -> All 0.5 over n = 2.
    check(gt, pred, {1: (0.0, 0, 1, 0), 3: (1.0, 1, 0, 0)}, 0.5, 2)


def test_crowd_never_matches():
    # A prediction identical to a crowd region: no TP, no FN, and no FP
    # (it lies entirely on its class's crowd). Nothing to average: n = 0.
    gt = [[100, 100, 100, 100]]
    pred = [[101, 101, 101, 101]]
    check(gt, pred, {}, 0.0, 0)


def test_prediction_of_another_class_does_not_match():
    # Same pixels, different class: FN for 3, FP for 4.
    gt = [[301, 301, 301]]
    pred = [[401, 401, 401]]
    check(gt, pred, {3: (0.0, 0, 0, 1), 4: (0.0, 0, 1, 0)}, 0.0, 2)


def test_absent_categories_and_things_stuff_split():
    # Thing 101 matched with IoU 3/4 (gt 4 px, pred 3 px inside it); stuff
    # 300 matched with IoU 1; classes 2 and 4 appear nowhere.
    gt = [[101, 101, 101, 101, 300, 300]]
    pred = [[V, 101, 101, 101, 300, 300]]
    result = check(gt, pred, {1: (0.75, 1, 0, 0), 3: (1.0, 1, 0, 0)},
                   (0.75 + 1.0) / 2, 2)
    assert result["Things"] == pytest.approx(
        {"pq": 0.75, "sq": 0.75, "rq": 1.0, "n": 1})
    assert result["Stuff"] == pytest.approx(
        {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 1})
    assert sorted(result["per_class"]) == ["1", "3"]
    assert result["per_class"]["1"]["pq"] == pytest.approx(0.75)


def test_statistics_add_over_images_of_a_batch():
    # Two images; class 3 matched in the first (IoU 1), missed in the second.
    gt = np.array([[[301, 301]], [[301, 301]]])
    pred = np.array([[[301, 301]], [[401, 401]]])
    stats = streaming.panoptic_statistics(
        tf.constant(gt), tf.constant(pred), 5, 100, 0, (1, 2))
    assert stats["tp"].numpy()[3] == 1 and stats["fn"].numpy()[3] == 1
    assert stats["fp"].numpy()[4] == 1
    result = streaming.result_from_statistics(stats, DESCRIPTOR)
    # Class 3: 1 / (1 + 0.5) ; class 4: 0 -> mean 1/3.
    assert result["All"]["pq"] == pytest.approx((1 / 1.5 + 0) / 2)


def test_ignore_label_other_than_zero():
    # Void = 255 * 100 + anything; class 0 is a real stuff class.
    descriptor = dataset_info.DatasetDescriptor(
        name="ignore255", num_classes=3, ignore_label=2, label_divisor=10,
        thing_class_ids=(1,))
    gt = np.array([[[0, 0, 20, 21, 11, 11]]])
    pred = np.array([[[0, 0, 0, 0, 11, 11]]])
    stats = streaming.panoptic_statistics(tf.constant(gt), tf.constant(pred),
                                          3, 10, 2, (1,))
    # Stuff 0: inter 2, union 4 + 2 - 2 - 2 (void) = 2 -> IoU 1.
    np.testing.assert_allclose(stats["iou_sum"].numpy(), [1, 1, 0])
    np.testing.assert_array_equal(stats["tp"].numpy(), [1, 1, 0])
    np.testing.assert_array_equal(stats["fp"].numpy() + stats["fn"].numpy(),
                                  [0, 0, 0])
    rgb, segments = coco_format.panoptic_to_coco(gt[0], descriptor)
    # Class 0 instance 0 is a segment (id 1), not void.
    assert {s["id"] for s in segments} == {1, 12}


# ---------------------------------------------------------------------------
# The command on COCO-format files.

COCO_DESCRIPTOR = dataset_info.DatasetDescriptor(
    name="pq_files", num_classes=5, ignore_label=0, label_divisor=100,
    thing_class_ids=(1, 2), category_ids=(-1, 7, 9, 20, 31),
    class_names=("void", "cat", "dog", "sky", "grass"))
CATEGORY = {1: 7, 2: 9, 3: 20, 4: 31}


def random_pair(rng, height, width):
    """A ground truth with stuff, things, crowd and void, and a perturbed
    prediction (shifted boxes, changed classes, extra and missing things)."""
    gt = np.where(np.arange(height)[:, None] < height // 2, 300, 400)
    gt = np.broadcast_to(gt, (height, width)).copy()
    pred = gt.copy()
    pred[:, : width // 5] = 300 + 100 * (rng.rand() < 0.5)
    for instance in range(1, 7):
        cls = rng.choice([1, 2])
        h, w = rng.randint(2, height // 2), rng.randint(2, width // 2)
        y, x = rng.randint(0, height - h), rng.randint(0, width - w)
        crowd = rng.rand() < 0.2
        gt[y:y + h, x:x + w] = cls * 100 + (0 if crowd else instance)
        if rng.rand() < 0.85:
            dy, dx = rng.randint(-2, 3, size=2)
            pcls = cls if rng.rand() < 0.8 else 3 - cls
            py, px = np.clip(y + dy, 0, height - 1), np.clip(x + dx, 0, width - 1)
            pred[py:py + h, px:px + w] = pcls * 100 + instance
    for _ in range(2):  # void in both, not aligned
        y, x = rng.randint(0, height - 3), rng.randint(0, width - 3)
        gt[y:y + 3, x:x + 4] = 0
        y, x = rng.randint(0, height - 3), rng.randint(0, width - 3)
        pred[y:y + 2, x:x + 3] = 0
    return gt.astype(np.int32), pred.astype(np.int32)


def write_dataset(directory, pairs):
    gt_writer = coco_format.CocoPanopticWriter(
        f"{directory}/gt", COCO_DESCRIPTOR, "gt.json", "png",
        ground_truth=True)
    pred_writer = coco_format.CocoPanopticWriter(
        f"{directory}/pred", COCO_DESCRIPTOR, "pred.json", "png")
    for i, (gt, pred) in enumerate(pairs):
        gt_writer.add(i, gt, f"img{i}.png")
        pred_writer.add(i, pred, f"img{i}.png")
    return (gt_writer.close(), gt_writer.png_dir, pred_writer.close(),
            pred_writer.png_dir)


def brute_force_pq(gt_json, gt_dir, pred_json, pred_dir):
    """The official per-image loops, one pair of segments at a time."""
    from PIL import Image
    import json as json_lib

    gt_data = json_lib.load(open(gt_json))
    pred_data = json_lib.load(open(pred_json))
    isthing = {c["id"]: c["isthing"] for c in gt_data["categories"]}
    preds = {a["image_id"]: a for a in pred_data["annotations"]}
    stat = {c: [0.0, 0, 0, 0] for c in isthing}  # iou, tp, fp, fn

    def load(path):
        rgb = np.array(Image.open(path), np.int64)
        return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]

    for gt_ann in gt_data["annotations"]:
        pred_ann = preds[gt_ann["image_id"]]
        gt_ids = load(f"{gt_dir}/{gt_ann['file_name']}")
        pred_ids = load(f"{pred_dir}/{pred_ann['file_name']}")
        gt_segs = {s["id"]: dict(s) for s in gt_ann["segments_info"]}
        pred_segs = {s["id"]: dict(s) for s in pred_ann["segments_info"]}
        for s in pred_segs.values():
            s["area"] = int((pred_ids == s["id"]).sum())
        pairs = {}
        for g, p in zip(gt_ids.ravel().tolist(), pred_ids.ravel().tolist()):
            pairs[(g, p)] = pairs.get((g, p), 0) + 1
        gt_done, pred_done = set(), set()
        for (g, p), inter in pairs.items():
            if g not in gt_segs or p not in pred_segs:
                continue
            if gt_segs[g]["iscrowd"]:
                continue
            if gt_segs[g]["category_id"] != pred_segs[p]["category_id"]:
                continue
            union = (pred_segs[p]["area"] + gt_segs[g]["area"] - inter
                     - pairs.get((0, p), 0))
            if inter / union > 0.5:
                stat[gt_segs[g]["category_id"]][0] += inter / union
                stat[gt_segs[g]["category_id"]][1] += 1
                gt_done.add(g)
                pred_done.add(p)
        crowd = {}
        for g, s in gt_segs.items():
            if g in gt_done:
                continue
            if s["iscrowd"]:
                crowd[s["category_id"]] = g
                continue
            stat[s["category_id"]][3] += 1
        for p, s in pred_segs.items():
            if p in pred_done:
                continue
            covered = pairs.get((0, p), 0)
            if s["category_id"] in crowd:
                covered += pairs.get((crowd[s["category_id"]], p), 0)
            if covered / s["area"] > 0.5:
                continue
            stat[s["category_id"]][2] += 1
    out = {}
    for group, want in (("All", None), ("Things", 1), ("Stuff", 0)):
        values = []
        for c, (iou, tp, fp, fn) in stat.items():
            if want is not None and isthing[c] != want:
                continue
            if tp + fp + fn == 0:
                continue
            values.append((iou / (tp + fp / 2 + fn / 2),
                           iou / tp if tp else 0.0, tp / (tp + fp / 2 + fn / 2)))
        n = len(values)
        out[group] = {"pq": sum(v[0] for v in values) / n,
                      "sq": sum(v[1] for v in values) / n,
                      "rq": sum(v[2] for v in values) / n, "n": n}
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    rng = np.random.RandomState(7)
    pairs = [random_pair(rng, h, w) for h, w in
             [(24, 32), (24, 32), (24, 32), (17, 40), (17, 40), (30, 30)]]
    directory = str(tmp_path_factory.mktemp("pq"))
    return pairs, write_dataset(directory, pairs), directory


def test_command_agrees_with_streaming_and_brute_force(files):
    import json as json_lib
    import subprocess
    import sys

    pairs, (gt_json, gt_dir, pred_json, pred_dir), directory = files
    output = f"{directory}/pq.json"
    run = subprocess.run(
        [sys.executable, "-m", "max_deeplab_tf.evaluation.panoptic_quality",
         "--gt_json", gt_json, "--gt_dir", gt_dir, "--pred_json", pred_json,
         "--pred_dir", pred_dir, "--output_json", output, "--workers", "2"],
        capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "PQ" in run.stdout and "Things" in run.stdout
    command = json_lib.load(open(output))

    metric = streaming.PanopticQuality(COCO_DESCRIPTOR)
    for size in sorted({p[0].shape for p in pairs}):
        batch = [p for p in pairs if p[0].shape == size]
        metric.update_state(np.stack([p[0] for p in batch]),
                            np.stack([p[1] for p in batch]))
    stream = metric.result()
    reference = brute_force_pq(gt_json, gt_dir, pred_json, pred_dir)

    for group in ("All", "Things", "Stuff"):
        assert command[group]["n"] == reference[group]["n"] > 0
        assert stream[group]["n"] == reference[group]["n"]
        for metric_name in ("pq", "sq", "rq"):
            assert command[group][metric_name] == pytest.approx(
                reference[group][metric_name], abs=1e-9)
            assert stream[group][metric_name] == pytest.approx(
                reference[group][metric_name], abs=1e-6)
    assert set(command["per_class"]) == set(stream["per_class"])
    assert set(command["per_class"]) <= {str(c) for c in CATEGORY.values()}
    names = dict(zip(("7", "9", "20", "31"), COCO_DESCRIPTOR.class_names[1:]))
    for category, values in command["per_class"].items():
        assert values["name"] == names[category]
    # The data exercises every rule: matches, misses, crowd, void.
    totals = {k: sum(v[k] for v in command["per_class"].values())
              for k in ("tp", "fp", "fn")}
    assert min(totals.values()) > 0


def test_one_worker_gives_the_same_result(files):
    _, (gt_json, gt_dir, pred_json, pred_dir), _ = files
    one = panoptic_quality.evaluate(gt_json, gt_dir, pred_json, pred_dir,
                                    workers=1)
    reference = brute_force_pq(gt_json, gt_dir, pred_json, pred_dir)
    assert one["All"]["pq"] == pytest.approx(reference["All"]["pq"], abs=1e-9)


def _edit_json(path, edit):
    import json as json_lib

    data = json_lib.load(open(path))
    edit(data)
    json_lib.dump(data, open(path, "w"))


@pytest.mark.parametrize("problem, message", [
    ("png_id_not_in_json", "in the PNG but not in"),
    ("json_id_not_in_png", "in the JSON but not in the PNG"),
    ("duplicate_id", "more than once"),
    ("unknown_category", "unknown category_id 99"),
    ("size_mismatch", "but its ground truth"),
    ("missing_prediction", "no prediction for 1 ground-truth image"),
    ("not_rgb", "expected an RGB PNG"),
    ("not_json", "not a JSON"),
    ("json_list", "expected a JSON object"),
    ("annotation_not_object", "expected each annotation to be an object"),
    ("segment_not_object", "is not an object"),
    ("string_segment_id", "non-integer 'id' or 'category_id'"),
    ("no_annotations", "lists no annotations"),
])
def test_malformed_input_is_rejected(tmp_path, problem, message):
    from PIL import Image

    rng = np.random.RandomState(3)
    gt_json, gt_dir, pred_json, pred_dir = write_dataset(
        str(tmp_path), [random_pair(rng, 20, 24), random_pair(rng, 20, 24)])
    first = lambda data: data["annotations"][0]["segments_info"]  # noqa
    if problem == "png_id_not_in_json":
        _edit_json(pred_json, lambda d: first(d).pop())
    elif problem == "json_id_not_in_png":
        _edit_json(pred_json, lambda d: first(d).append(
            {"id": 4242, "category_id": 7}))
    elif problem == "duplicate_id":
        _edit_json(gt_json, lambda d: first(d).append(dict(first(d)[0])))
    elif problem == "unknown_category":
        _edit_json(pred_json, lambda d: first(d)[0].update(category_id=99))
    elif problem == "size_mismatch":
        Image.new("RGB", (24, 21)).save(f"{pred_dir}/img1.png")
    elif problem == "missing_prediction":
        _edit_json(pred_json, lambda d: d["annotations"].pop())
    elif problem == "not_rgb":
        Image.new("L", (24, 20)).save(f"{pred_dir}/img0.png")
    elif problem == "not_json":
        open(pred_json, "w").write("{not json")
    elif problem == "json_list":
        open(pred_json, "w").write("[]")
    elif problem == "annotation_not_object":
        _edit_json(pred_json, lambda d: d["annotations"].append("img9"))
    elif problem == "segment_not_object":
        _edit_json(gt_json, lambda d: first(d).append(7))
    elif problem == "string_segment_id":
        _edit_json(pred_json, lambda d: first(d)[0].update(id="a"))
    elif problem == "no_annotations":
        _edit_json(gt_json, lambda d: d.update(annotations=[]))
    with pytest.raises(panoptic_quality.PanopticInputError, match=message):
        panoptic_quality.evaluate(gt_json, gt_dir, pred_json, pred_dir,
                                  workers=1)


def _run_command(args, timeout=120):
    """Runs the command in a subprocess; returns the CompletedProcess."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "max_deeplab_tf.evaluation.panoptic_quality"]
        + list(args), capture_output=True, text=True, timeout=timeout)


def _dataset_args(tmp_path, seed=4, size=12):
    rng = np.random.RandomState(seed)
    gt_json, gt_dir, pred_json, pred_dir = write_dataset(
        str(tmp_path), [random_pair(rng, size, size)])
    return ["--gt_json", gt_json, "--gt_dir", gt_dir, "--pred_json",
            pred_json, "--pred_dir", pred_dir, "--workers", "1"]


def test_command_reports_errors_in_one_line_with_exit_status(tmp_path,
                                                             capsys):
    from max_deeplab_tf import cli

    args = _dataset_args(tmp_path)
    args[args.index("--pred_json") + 1] = f"{tmp_path}/absent.json"
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(panoptic_quality.main, args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: {tmp_path}/absent.json: file not found\n"


@pytest.mark.parametrize("flag, value, message", [
    ("--gt_dir", "missing_folder", "--gt_dir: "),
    ("--pred_json", "gt/png/img0.png", "not a JSON panoptic prediction file"),
])
def test_command_bad_input_is_one_line_and_traceback_with_verbose(
        tmp_path, flag, value, message):
    args = _dataset_args(tmp_path)
    args[args.index(flag) + 1] = f"{tmp_path}/{value}"
    run = _run_command(args)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    assert message in lines[0] and f"{tmp_path}/{value}" in lines[0]
    verbose = _run_command(args + ["--verbose"])
    assert verbose.returncode == 2
    assert "Traceback (most recent call last)" in verbose.stderr


def test_command_does_not_import_tensorflow_for_local_paths(tmp_path):
    import subprocess
    import sys

    args = _dataset_args(tmp_path) + ["--output_json", f"{tmp_path}/pq.json"]
    # Run the module as `python -m` does, then report what was imported.
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['panoptic_quality'] + {args!r}\n"
        "try:\n"
        "    runpy.run_module('max_deeplab_tf.evaluation.panoptic_quality',"
        " run_name='__main__', alter_sys=True)\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "print('IMPORTED', sorted(m for m in sys.modules if m == 'tensorflow'"
        " or m.startswith('tensorflow.')))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "IMPORTED []" in run.stdout, run.stdout[-500:]
    assert "All" in run.stdout
    assert json_lib_load(f"{tmp_path}/pq.json")["All"]["n"] > 0


def json_lib_load(path):
    import json as json_lib

    with open(path) as f:
        return json_lib.load(f)


def test_output_json_is_never_overwritten_without_overwrite(tmp_path):
    import os

    output = tmp_path / "out" / "pq.json"
    output.parent.mkdir()
    output.write_text("the user's notes")
    args = _dataset_args(tmp_path) + ["--output_json", str(output)]
    run = _run_command(args)
    assert run.returncode == 2
    assert run.stderr == (f"error: --output_json: {output} already exists; "
                          "pass --overwrite to replace it\n")
    assert output.read_text() == "the user's notes"
    assert os.listdir(output.parent) == ["pq.json"]

    run = _run_command(args + ["--overwrite"])
    assert run.returncode == 0, run.stderr
    assert json_lib_load(output)["All"]["n"] > 0
    # Written through a temporary file in the same folder, then renamed: no
    # temporary file is left behind.
    assert os.listdir(output.parent) == ["pq.json"]


def test_output_json_into_a_new_folder_and_not_under_a_file(tmp_path):
    output = tmp_path / "new" / "folder" / "pq.json"
    run = _run_command(_dataset_args(tmp_path)
                       + ["--output_json", str(output)])
    assert run.returncode == 0, run.stderr
    assert json_lib_load(output)["All"]["n"] > 0

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    run = _run_command(_dataset_args(tmp_path)
                       + ["--output_json", f"{blocker}/pq.json"])
    assert run.returncode == 2
    assert f"--output_json: {blocker} is a file" in run.stderr
    assert blocker.read_text() == "x"


def test_write_json_file_refuses_a_file_that_appears_meanwhile(tmp_path):
    from max_deeplab_tf import cli

    path = tmp_path / "pq.json"
    panoptic_quality.write_json_file(str(path), {"a": 1})
    assert json_lib_load(path) == {"a": 1}
    with pytest.raises(cli.UserError, match="already exists"):
        panoptic_quality.write_json_file(str(path), {"a": 2})
    assert json_lib_load(path) == {"a": 1}
    panoptic_quality.write_json_file(str(path), {"a": 3}, overwrite=True)
    assert json_lib_load(path) == {"a": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["pq.json"]


def test_progress_is_plain_lines_when_not_a_terminal(tmp_path):
    rng = np.random.RandomState(5)
    gt_json, gt_dir, pred_json, pred_dir = write_dataset(
        str(tmp_path), [random_pair(rng, 10, 10) for _ in range(3)])
    run = _run_command(["--gt_json", gt_json, "--gt_dir", gt_dir,
                        "--pred_json", pred_json, "--pred_dir", pred_dir,
                        "--workers", "2"])
    assert run.returncode == 0, run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith(
        "panoptic quality: 3/3 images, ")


def test_remote_paths_are_read_through_gfile(files):
    """ram:// is TensorFlow's in-memory file system: reading it needs gfile,
    which the command imports only for such paths."""
    import os

    _, (gt_json, gt_dir, pred_json, pred_dir), _ = files
    root = "ram://pq_remote"
    for local, folder in ((gt_dir, "gt"), (pred_dir, "pred")):
        tf.io.gfile.makedirs(f"{root}/{folder}")
        for name in os.listdir(local):
            tf.io.gfile.copy(f"{local}/{name}", f"{root}/{folder}/{name}",
                             overwrite=True)
    tf.io.gfile.copy(gt_json, f"{root}/gt.json", overwrite=True)
    tf.io.gfile.copy(pred_json, f"{root}/pred.json", overwrite=True)
    remote = panoptic_quality.evaluate(f"{root}/gt.json", f"{root}/gt",
                                       f"{root}/pred.json", f"{root}/pred",
                                       workers=1)
    local = panoptic_quality.evaluate(gt_json, gt_dir, pred_json, pred_dir,
                                      workers=1)
    assert remote == local
    with pytest.raises(panoptic_quality.PanopticInputError,
                       match=f"{root}/absent.json: file not found"):
        panoptic_quality.evaluate(gt_json, gt_dir, f"{root}/absent.json",
                                  pred_dir, workers=1)
    panoptic_quality.write_json_file(f"{root}/out/pq.json", local)
    with tf.io.gfile.GFile(f"{root}/out/pq.json") as f:
        assert f.read().startswith("{")
    assert tf.io.gfile.listdir(f"{root}/out") == ["pq.json"]


def _pair_counts_brute_force(gt_ids, pred_ids):
    """(gt id, pred id) -> pixel count, one pixel at a time."""
    counts = {}
    for g, p in zip(np.ravel(gt_ids).tolist(), np.ravel(pred_ids).tolist()):
        counts[(g, p)] = counts.get((g, p), 0) + 1
    return counts


def _pair_counts_of_runs(gt_run_ids, pred_run_ids, lengths):
    counts = {}
    for g, p, n in zip(gt_run_ids.tolist(), pred_run_ids.tolist(),
                       lengths.tolist()):
        counts[(g, p)] = counts.get((g, p), 0) + n
    return counts


@pytest.mark.parametrize("height, width, levels", [
    (1, 1, 3), (1, 9, 2), (9, 1, 2), (7, 11, 2), (16, 16, 5), (5, 40, 300),
])
def test_runs_count_every_pixel_pair(height, width, levels):
    """The run-length counting against a pixel-by-pixel count, on maps
    with runs of every length, changes in one channel only (R, G or B) and
    ids that differ only in the high byte."""
    rng = np.random.RandomState(height * 100 + width)
    for _ in range(20):
        # Few distinct ids per map, so that runs are long; each id picked
        # from pairs that share two of three bytes.
        base = rng.randint(0, 256 ** 3, size=levels)
        choices = np.concatenate([base, base ^ 1, base ^ (1 << 8),
                                  base ^ (1 << 16)])
        gt = rng.choice(choices, size=(height, width))
        pred = rng.choice(choices, size=(height, width))
        # Long runs as well: repeat some rows and columns.
        if rng.rand() < 0.5:
            gt[:, : width // 2] = gt[:, :1]
            pred[: height // 2] = pred[:1]
        expected = _pair_counts_brute_force(gt, pred)
        gt_rgb = panoptic_quality.id_to_rgb(gt)
        pred_rgb = panoptic_quality.id_to_rgb(pred)
        assert _pair_counts_of_runs(*panoptic_quality._runs_of_rgb(
            gt_rgb, pred_rgb)) == expected
        assert _pair_counts_of_runs(*panoptic_quality._runs_of_ids(
            gt, pred)) == expected


# --------------------------------------------------------------------------
# Reading the PNGs: libspng for 8-bit RGB/RGBA, Pillow for the rest, the
# pixels Pillow gives in every case.

_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4),
          (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _png_bytes(pixels, interlaced=False):
    """A PNG written by hand (PNG spec: IHDR, one IDAT, IEND; filter 0; Adam7
    passes when interlaced): uint8 or big-endian uint16 [H, W, 3 or 4]."""
    import struct
    import zlib

    height, width, channels = pixels.shape
    depth = 16 if pixels.dtype == np.uint16 else 8
    pixels = pixels.astype(">u2") if depth == 16 else pixels

    def rows(image):
        return b"".join(b"\x00" + row.tobytes() for row in image)

    if interlaced:
        raw = b"".join(rows(pixels[y0::dy, x0::dx])
                       for x0, y0, dx, dy in _ADAM7
                       if pixels[y0::dy, x0::dx].size)
    else:
        raw = rows(pixels)

    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    colour_type = {3: 2, 4: 6}[channels]
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0,
                         int(interlaced))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _pillow_rgb(path):
    """The reference: Pillow's pixels, alpha dropped."""
    from PIL import Image

    with Image.open(path) as image:
        pixels = np.asarray(image)
    return pixels[..., :3]


@pytest.mark.parametrize("channels, interlaced, height, width", [
    (3, False, 37, 53), (4, False, 37, 53), (3, True, 37, 53),
    (4, True, 5, 3), (3, False, 1, 1), (3, True, 1, 9)])
def test_png_pixels_equal_pillows(tmp_path, channels, interlaced, height,
                                  width):
    rng = np.random.RandomState(height * width + channels)
    pixels = rng.randint(0, 256, (height, width, channels)).astype(np.uint8)
    path = tmp_path / "image.png"
    path.write_bytes(_png_bytes(pixels, interlaced))
    got = panoptic_quality.read_rgb_png(str(path))
    assert got.dtype == np.uint8 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, pixels[..., :3])
    np.testing.assert_array_equal(got, _pillow_rgb(path))


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_pillow_written_png_is_read_by_libspng(tmp_path, monkeypatch, mode):
    from PIL import Image

    rng = np.random.RandomState(5)
    pixels = rng.randint(0, 256, (30, 41, len(mode))).astype(np.uint8)
    path = tmp_path / "image.png"
    Image.fromarray(pixels, mode).save(path, compress_level=9)

    def no_pillow(data, path):
        raise AssertionError("decoded by Pillow")

    monkeypatch.setattr(panoptic_quality, "_decode_with_pillow", no_pillow)
    np.testing.assert_array_equal(panoptic_quality.read_rgb_png(str(path)),
                                  pixels[..., :3])


def test_other_pngs_go_to_pillow(tmp_path):
    from PIL import Image

    rng = np.random.RandomState(6)
    # 16-bit RGB: Pillow's 8-bit reading of it, as before.
    deep = rng.randint(0, 65536, (6, 7, 3)).astype(np.uint16)
    path = tmp_path / "deep.png"
    path.write_bytes(_png_bytes(deep))
    np.testing.assert_array_equal(panoptic_quality.read_rgb_png(str(path)),
                                  _pillow_rgb(path))
    # Palette and grey-level images are refused, naming the file.
    for mode in ("P", "L", "LA"):
        path = tmp_path / f"{mode}.png"
        Image.new(mode, (4, 3)).save(path)
        with pytest.raises(panoptic_quality.PanopticInputError,
                           match=f"{mode}.png: expected an RGB PNG"):
            panoptic_quality.read_rgb_png(str(path))


@pytest.mark.parametrize("damage", [
    "truncated", "no_iend", "idat_crc", "zlib_checksum", "deflate_data",
    "header_crc"])
def test_damaged_png_is_one_clear_error(tmp_path, damage):
    rng = np.random.RandomState(7)
    data = bytearray(_png_bytes(
        rng.randint(0, 256, (20, 20, 3)).astype(np.uint8)))
    idat = data.index(b"IDAT")
    # The file ends with IDAT's CRC (4 bytes) and IEND (12 bytes); IDAT's
    # data ends with the zlib stream's Adler-32 checksum.
    if damage == "truncated":
        data = data[:idat + 30]
    elif damage == "no_iend":
        data = data[:-12]
    elif damage == "idat_crc":
        data[-13] ^= 0xFF
    elif damage == "zlib_checksum":
        data[-17] ^= 0xFF
    elif damage == "deflate_data":
        data[idat + 10] ^= 0xFF
    else:
        data[data.index(b"IHDR") + 17] ^= 0xFF  # IHDR's CRC
    path = tmp_path / "damaged.png"
    path.write_bytes(bytes(data))
    with pytest.raises(panoptic_quality.PanopticInputError,
                       match="damaged.png: not a readable PNG"):
        panoptic_quality.read_rgb_png(str(path))


def _png_chunk(kind, body):
    import struct
    import zlib

    return (struct.pack(">I", len(body)) + kind + body
            + struct.pack(">I", zlib.crc32(kind + body)))


def _png_from_stream(pixels, stream, idat_pieces=1, text=False):
    """An 8-bit RGB PNG [H, W, 3] whose IDAT data is `stream` (any bytes,
    chunk CRCs right), cut into `idat_pieces` IDAT chunks; with `text`, a
    tEXt chunk before and after the image data."""
    import struct

    height, width, _ = pixels.shape
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    cuts = np.linspace(0, len(stream), idat_pieces + 1).astype(int)
    idats = b"".join(_png_chunk(b"IDAT", stream[a:b])
                     for a, b in zip(cuts[:-1], cuts[1:]))
    note = _png_chunk(b"tEXt", b"Comment\x00made by a test") if text else b""
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + note
            + idats + note + _png_chunk(b"IEND", b""))


def _filtered_rows(pixels):
    return b"".join(b"\x00" + row.tobytes() for row in pixels)


def test_png_image_data_in_several_chunks_among_others(tmp_path):
    # The image data is joined from every IDAT chunk and inflated at once;
    # chunks before and after it are kept. Truth: the pixels written, and
    # Pillow's reading of the same file.
    import zlib

    rng = np.random.RandomState(8)
    pixels = rng.randint(0, 256, (23, 31, 3)).astype(np.uint8)
    path = tmp_path / "pieces.png"
    path.write_bytes(_png_from_stream(
        pixels, zlib.compress(_filtered_rows(pixels)), idat_pieces=5,
        text=True))
    got = panoptic_quality.read_rgb_png(str(path))
    np.testing.assert_array_equal(got, pixels)
    np.testing.assert_array_equal(got, _pillow_rgb(path))


@pytest.mark.parametrize("damage, message", [
    # Chunk CRCs all right: only the zlib stream's own checks can tell.
    ("adler32", "does not inflate"),
    ("one_row_more", "inflates to more than 100 bytes, what its 8x4 header "
                     "needs"),
    ("one_row_less", "inflates to 75 bytes where its 8x4 header needs 100"),
    ("stream_cut_short", "image data stream is cut short"),
    ("no_image_data", "has no IDAT chunk"),
])
def test_png_image_data_that_does_not_fit_its_header_is_refused(
        tmp_path, damage, message):
    import zlib

    rng = np.random.RandomState(9)
    pixels = rng.randint(0, 256, (4, 8, 3)).astype(np.uint8)  # 4 x 25 bytes
    # (a filter byte and 8 x 3 colour bytes a row)
    rows = _filtered_rows(pixels)
    stream = zlib.compress(rows)
    if damage == "adler32":
        stream = stream[:-1] + bytes([stream[-1] ^ 0xFF])
    elif damage == "one_row_more":
        stream = zlib.compress(rows + rows[:25])
    elif damage == "one_row_less":
        stream = zlib.compress(rows[:-25])
    elif damage == "stream_cut_short":
        # Every row inflates, but the stream's end and checksum are missing.
        compressor = zlib.compressobj()
        stream = compressor.compress(rows) + compressor.flush(zlib.Z_SYNC_FLUSH)
    data = _png_from_stream(pixels, stream)
    if damage == "no_image_data":
        start = data.index(b"IDAT") - 4
        end = start + 12 + len(stream)
        data = data[:start] + data[end:]
    path = tmp_path / "damaged.png"
    path.write_bytes(data)
    with pytest.raises(panoptic_quality.PanopticInputError,
                       match=f"damaged.png: not a readable PNG: .*{message}"):
        panoptic_quality.read_rgb_png(str(path))


def test_png_rewritten_for_libspng_is_a_valid_png_of_the_same_pixels(
        tmp_path):
    # The file libspng is given (image data stored uncompressed) must be a
    # PNG in its own right: its CRCs check, and Pillow, which checks CRCs
    # and the zlib checksum, reads the pixels that were written.
    import io

    from PIL import Image

    rng = np.random.RandomState(10)
    pixels = np.repeat(rng.randint(0, 256, (12, 1, 3)), 50, axis=1).astype(
        np.uint8)  # runs of one colour, as in panoptic PNGs
    path = tmp_path / "runs.png"
    Image.fromarray(pixels, "RGB").save(path)
    data = path.read_bytes()
    stored = panoptic_quality._with_image_data_stored(
        data, panoptic_quality._checked_chunks(data))
    assert len(stored) > len(data)  # no longer compressed
    kinds = [kind for kind, _, _ in panoptic_quality._checked_chunks(stored)]
    assert kinds.count(b"IDAT") == 1
    with Image.open(io.BytesIO(stored)) as image:
        np.testing.assert_array_equal(np.asarray(image), pixels)
