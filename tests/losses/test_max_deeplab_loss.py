"""Tests for max_deeplab_tf.losses.MaXDeepLabLoss.

Truths used here: a hand-worked 6-pixel example, and an independent numpy
implementation of deeplab2's definitions written with loops and
scipy.optimize.linear_sum_assignment (it shares no code with the library).
The loss always uses the real max_deeplab_tf.ops.hungarian_matching.
"""

import itertools

import numpy as np
import pytest
import scipy.optimize
import tensorflow as tf
from google.protobuf import text_format

from max_deeplab_tf import common
from max_deeplab_tf.data import dataset_info
from max_deeplab_tf.losses import MaXDeepLabLoss
from max_deeplab_tf.protos import trainer_pb2

# void 0; things (3, 1); stuff (2, 4): transformer classes [3, 1, 2, 4, void].
DESCRIPTOR = dataset_info.DatasetDescriptor(
    name="tiny", num_classes=5, ignore_label=0, label_divisor=256,
    thing_class_ids=(3, 1))
THINGS = (3, 1)
STUFF = (2, 4)
CLASS_IDS = THINGS + STUFF
K = len(CLASS_IDS)
W_PQ, W_ID, W_INST, W_SEM = 3.0, 0.3, 1.0, 1.0
ALPHA, TAU = 0.75, 0.3
TERMS = (common.PQ_STYLE_LOSS_CLASS_TERM, common.PQ_STYLE_LOSS_MASK_DICE_TERM,
         common.MASK_ID_CROSS_ENTROPY_LOSS,
         common.INSTANCE_DISCRIMINATION_LOSS, common.SEMANTIC_LOSS)


def make_options(top_k=1.0, **weights):
    w = dict(pq=W_PQ, mask_id=W_ID, inst=W_INST, sem=W_SEM)
    w.update(weights)
    text = f"""
      semantic_loss {{ name: "softmax_cross_entropy" weight: {w['sem']}
                       top_k_percent: {top_k} }}
      pq_style_loss {{ weight: {w['pq']} }}
      mask_id_cross_entropy_loss {{ weight: {w['mask_id']}
                                    top_k_percent: {top_k} }}
      instance_discrimination_loss {{ weight: {w['inst']}
                                      top_k_percent: {top_k} }}
      pq_style_loss_alpha: {ALPHA}
      instance_discrimination_temperature: {TAU}"""
    return text_format.Parse(text, trainer_pb2.LossOptions())


@pytest.fixture(scope="module")
def loss_fn():
    return MaXDeepLabLoss(make_options(), DESCRIPTOR)


def to_np(d):
    return {k: np.asarray(v) for k, v in d.items()}


# ---------------------------------------------------------------------------
# Independent numpy reference.
# ---------------------------------------------------------------------------

def _log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _top_k_mean(values, fraction):
    k = int(np.round(np.float32(fraction) * np.float32(values.size)))
    kept = np.sort(values.ravel())[::-1][:k]
    count = np.count_nonzero(kept)
    return kept.sum() / count if count else 0.0


def reference_losses(y_true, y_pred, top_k=1.0, weights=None):
    """deeplab2's MaX-DeepLab loss, one example at a time, in float64."""
    w = dict(pq=W_PQ, mask_id=W_ID, inst=W_INST, sem=W_SEM)
    w.update(weights or {})
    mask_logits = np.asarray(y_pred[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY],
                             np.float64)
    batch, h, wd, n = mask_logits.shape
    out = {key: np.zeros(batch) for key in TERMS}
    for b in range(batch):
        sem_full = np.asarray(y_true[common.GT_SEMANTIC_KEY])[b]
        tid_full = np.asarray(y_true[common.GT_THING_ID_MASK_KEY])[b]
        tcls = np.asarray(y_true[common.GT_THING_ID_CLASS_KEY])[b]
        s = (sem_full.shape[0] - 1) // (h - 1) if h > 1 else 1
        sem = sem_full[::s, ::s].ravel()
        tid = tid_full[::s, ::s].ravel()
        non_void = sem != 0
        # Ground-truth masks: thing ids, then stuff classes.
        masks = []
        for t in range(len(tcls)):
            masks.append((tid == t, CLASS_IDS.index(tcls[t])
                          if tcls[t] in CLASS_IDS else None))
        for c in STUFF:
            masks.append((sem == c, CLASS_IDS.index(c)))
        labelled = np.any([m for m, _ in masks], axis=0)
        valid = [j for j, (m, k) in enumerate(masks)
                 if m.sum() > 0 and k is not None]

        q = np.exp(_log_softmax(mask_logits[b].reshape(-1, n)))
        log_q = _log_softmax(mask_logits[b].reshape(-1, n))
        log_pc = _log_softmax(np.asarray(
            y_pred[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY], np.float64)[b])
        pc = np.exp(log_pc)

        def dice(j, i):
            m = masks[j][0]
            inter = (q[:, i] * non_void)[m].sum()
            return inter / ((m.sum() + (q[:, i] * non_void).sum()) / 2 + 1e-5)

        sim = np.array([[dice(j, i) * pc[i, masks[j][1]] for i in range(n)]
                        for j in valid]).reshape(len(valid), n)
        rows, cols = scipy.optimize.linear_sum_assignment(-sim)
        slot_to_mask = {i: valid[r] for r, i in zip(rows, cols)}

        # PQ-style class term.
        terms = []
        for i in range(n):
            if i in slot_to_mask:
                j = slot_to_mask[i]
                terms.append(-log_pc[i, masks[j][1]] * ALPHA *
                             max(dice(j, i), 1e-5))
            else:
                ratio = q[~non_void, i].sum() / (q[:, i].sum() + 1e-5)
                terms.append(-log_pc[i, -1] * (1 - ALPHA) * max(ratio, 1e-5))
        terms = np.array(terms)
        out[common.PQ_STYLE_LOSS_CLASS_TERM][b] = (
            terms.sum() / np.count_nonzero(terms) * w["pq"])

        # PQ-style mask Dice term.
        total = 0.0
        for i, j in slot_to_mask.items():
            m, k = masks[j]
            qi = q[:, i] * labelled
            dice_loss = 1 - (2 * qi[m].sum() + 1) / (qi.sum() + m.sum() + 1)
            total += max(pc[i, k], 1e-5) * dice_loss
        out[common.PQ_STYLE_LOSS_MASK_DICE_TERM][b] = (
            total * w["pq"] * ALPHA / n)

        # Mask-ID cross-entropy.
        pixel = np.zeros(len(sem))
        for i, j in slot_to_mask.items():
            pixel[masks[j][0]] = -log_q[masks[j][0], i]
        out[common.MASK_ID_CROSS_ENTROPY_LOSS][b] = (
            _top_k_mean(pixel, top_k) * w["mask_id"])

        # Instance discrimination.
        feat = np.asarray(
            y_pred[common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY],
            np.float64)[b].reshape(len(sem), -1)
        protos = {}
        for j in valid:
            mean = feat[masks[j][0]].mean(axis=0)
            protos[j] = mean / np.sqrt(max((mean ** 2).sum(), 1e-12))
        pixel = np.zeros(len(sem))
        for p in np.nonzero(tid != -1)[0]:
            own = [j for j in valid if masks[j][0][p]]
            if not own:
                continue
            logits = np.array([feat[p] @ protos[j] / TAU for j in valid])
            pixel[p] = -_log_softmax(logits)[valid.index(own[0])]
        out[common.INSTANCE_DISCRIMINATION_LOSS][b] = (
            _top_k_mean(pixel, top_k) * w["inst"])

        # Semantic loss.
        sem_logits = np.asarray(y_pred[common.PRED_SEMANTIC_LOGITS_KEY],
                                np.float64)[b]
        s2 = (sem_full.shape[0] - 1) // (sem_logits.shape[0] - 1)
        labels = sem_full[::s2, ::s2]
        lw = np.asarray(y_true[common.SEMANTIC_LOSS_WEIGHT_KEY])[b][::s2, ::s2]
        log_ps = _log_softmax(sem_logits)
        pixel = np.where(
            labels != 0,
            -np.take_along_axis(log_ps, labels[..., None], -1)[..., 0] * lw,
            0.0)
        out[common.SEMANTIC_LOSS][b] = _top_k_mean(pixel, top_k) * w["sem"]
    return out


def random_example(seed, batch=2, h=4, stride=2, n=6, max_thing_id=4,
                   num_things=3, d=5, void_fraction=0.15):
    """Random consistent ground truth (things, crowd, stuff, void) + logits."""
    rng = np.random.default_rng(seed)
    size = (h - 1) * stride + 1
    tcls = np.full((batch, max_thing_id), -1, np.int32)
    tcls[:, :num_things] = rng.choice(THINGS, (batch, num_things))
    # Region per pixel: 0 void, 1/2 stuff 2/4, 3 crowd, 4.. thing id.
    region = rng.integers(0, 4 + num_things, (batch, size, size))
    region[rng.random(region.shape) < void_fraction] = 0
    sem = np.zeros(region.shape, np.int32)
    tid = np.full(region.shape, -1, np.int32)
    sem[region == 1] = 2
    sem[region == 2] = 4
    sem[region == 3] = 3
    for b in range(batch):
        for t in range(num_things):
            sem[b][region[b] == 4 + t] = tcls[b, t]
            tid[b][region[b] == 4 + t] = t
    y_true = {
        common.GT_SEMANTIC_KEY: sem,
        common.GT_THING_ID_MASK_KEY: tid,
        common.GT_THING_ID_CLASS_KEY: tcls,
        common.SEMANTIC_LOSS_WEIGHT_KEY:
            rng.uniform(0.5, 2.0, sem.shape).astype(np.float32),
    }
    feat = rng.normal(size=(batch, h, h, d))
    feat /= np.linalg.norm(feat, axis=-1, keepdims=True)
    y_pred = {
        common.PRED_TRANSFORMER_CLASS_LOGITS_KEY:
            rng.normal(size=(batch, n, K + 1)).astype(np.float32),
        common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY:
            (2 * rng.normal(size=(batch, h, h, n))).astype(np.float32),
        common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY:
            feat.astype(np.float32),
        common.PRED_SEMANTIC_LOGITS_KEY:
            rng.normal(size=(batch, h, h, 5)).astype(np.float32),
    }
    return y_true, y_pred


def assert_matches_reference(out, ref, rtol=2e-5, atol=1e-6):
    for key in TERMS:
        np.testing.assert_allclose(out[key], ref[key], rtol=rtol, atol=atol,
                                   err_msg=key)
    np.testing.assert_allclose(out[common.TOTAL_LOSS],
                               sum(ref[key] for key in TERMS),
                               rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------
# Hand-worked example.
# ---------------------------------------------------------------------------

def hand_example():
    # 2x3 pixels, p0..p5 row-major: p0, p1 thing 0 (class 3), p2 stuff 2,
    # p3 thing 1 (class 1), p4 void, p5 stuff 2. Valid masks: t0, t1, s2.
    sem = np.array([[[3, 3, 2], [1, 0, 2]]], np.int32)
    tid = np.array([[[0, 0, -1], [1, -1, -1]]], np.int32)
    tcls = np.array([[3, 1, -1]], np.int32)
    lw = np.array([[[1, 1, 2], [1, 1, 1]]], np.float32)
    # Mask logits: 2 on the owning slot, 0 elsewhere. Slot 0 -> stuff 2,
    # slot 2 -> thing 0, slot 3 -> thing 1, slot 1 -> the void pixel.
    owner = [2, 2, 0, 3, 1, 0]
    mask_logits = np.zeros((1, 6, 4), np.float32)
    mask_logits[0, np.arange(6), owner] = 2.0
    class_logits = np.array([[[0, 0, 3, 0, 0],     # slot 0: stuff 2
                              [0, 0, 0, 0, 3],     # slot 1: void
                              [3, 0, 0, 0, 0],     # slot 2: class 3
                              [1, 2, 0, 0, 0]]],   # slot 3: mostly class 1
                            np.float32)
    feat = np.array([[1, 0], [0.6, 0.8], [-1, 0], [0, 1], [0, -1], [-1, 0]],
                    np.float32)
    sem_logits = np.zeros((1, 6, 5), np.float32)
    sem_logits[0, [0, 2, 3], [3, 2, 1]] = 1.0  # p0, p2, p3 favour the truth
    y_true = {common.GT_SEMANTIC_KEY: sem, common.GT_THING_ID_MASK_KEY: tid,
              common.GT_THING_ID_CLASS_KEY: tcls,
              common.SEMANTIC_LOSS_WEIGHT_KEY: lw}
    y_pred = {common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY:
                  mask_logits.reshape(1, 2, 3, 4),
              common.PRED_TRANSFORMER_CLASS_LOGITS_KEY: class_logits,
              common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY:
                  feat.reshape(1, 2, 3, 2),
              common.PRED_SEMANTIC_LOGITS_KEY: sem_logits.reshape(1, 2, 3, 5)}
    return y_true, y_pred


def test_hand_worked_example(loss_fn):
    y_true, y_pred = hand_example()
    out = to_np(loss_fn(y_true, y_pred))
    e2 = np.exp(2.0)
    a, b = e2 / (e2 + 3), 1 / (e2 + 3)  # owner / other slot probability

    def softmax(row):
        row = np.exp(np.asarray(row, np.float64))
        return row / row.sum()

    p0 = softmax([0, 0, 3, 0, 0])  # transformer classes [3, 1, 2, 4, void]
    p1 = softmax([0, 0, 0, 0, 3])
    p2 = softmax([3, 0, 0, 0, 0])
    p3 = softmax([1, 2, 0, 0, 0])
    # Matching: slot 0 <-> stuff 2, slot 2 <-> thing 0, slot 3 <-> thing 1.
    # Matching Dice (void pixel p4 removed from the prediction):
    dice_t0 = 2 * (2 * a) / (2 + 2 * a + 3 * b + 2e-5)   # slot 2
    dice_s2 = 2 * (2 * a) / (2 + 2 * a + 3 * b + 2e-5)   # slot 0
    dice_t1 = 2 * a / (1 + a + 4 * b + 2e-5)             # slot 3
    void_ratio_1 = a / (a + 5 * b + 1e-5)                # slot 1 on p4
    class_terms = [ALPHA * dice_s2 * -np.log(p0[2]),
                   (1 - ALPHA) * void_ratio_1 * -np.log(p1[4]),
                   ALPHA * dice_t0 * -np.log(p2[0]),
                   ALPHA * dice_t1 * -np.log(p3[1])]
    np.testing.assert_allclose(out[common.PQ_STYLE_LOSS_CLASS_TERM],
                               [W_PQ * sum(class_terms) / 4], rtol=1e-5)

    # Smoothed Dice loss on labelled pixels (all but p4), weighted by p(class).
    dice_loss_t0 = 1 - (2 * 2 * a + 1) / (2 * a + 3 * b + 2 + 1)
    dice_loss_s2 = 1 - (2 * 2 * a + 1) / (2 * a + 3 * b + 2 + 1)
    dice_loss_t1 = 1 - (2 * a + 1) / (a + 4 * b + 1 + 1)
    dice_term = (p2[0] * dice_loss_t0 + p0[2] * dice_loss_s2 +
                 p3[1] * dice_loss_t1)
    np.testing.assert_allclose(out[common.PQ_STYLE_LOSS_MASK_DICE_TERM],
                               [W_PQ * ALPHA / 4 * dice_term], rtol=1e-5)

    # Every labelled pixel gives its matched slot probability a.
    np.testing.assert_allclose(out[common.MASK_ID_CROSS_ENTROPY_LOSS],
                               [W_ID * -np.log(a)], rtol=1e-5)

    # Prototypes: t0 = normalise((0.8, 0.4)), t1 = (0, 1), s2 = (-1, 0).
    protos = np.array([[0.8, 0.4] / np.sqrt(0.8), [0, 1], [-1, 0]])
    inst = 0.0
    for f, own in (([1, 0], 0), ([0.6, 0.8], 0), ([0, 1], 1)):
        logits = protos @ np.array(f) / TAU
        inst += np.log(np.exp(logits).sum()) - logits[own]
    np.testing.assert_allclose(out[common.INSTANCE_DISCRIMINATION_LOSS],
                               [W_INST * inst / 3], rtol=1e-5)

    # Semantic: p0, p3 favoured (weight 1), p2 favoured (weight 2), p1 and
    # p5 uniform, p4 void; mean over the 5 non-void pixels.
    favoured = np.log(np.e + 4) - 1
    sem = (favoured + favoured + 2 * favoured + np.log(5) + np.log(5)) / 5
    np.testing.assert_allclose(out[common.SEMANTIC_LOSS], [W_SEM * sem],
                               rtol=1e-5)
    np.testing.assert_allclose(
        out[common.TOTAL_LOSS],
        sum(out[key] for key in TERMS), rtol=1e-6)
    # The numpy reference agrees with the hand computation too.
    assert_matches_reference(out, reference_losses(y_true, y_pred))


def test_uniform_predictions_closed_form(loss_fn):
    # All logits zero: slot probabilities 1/N, so the mask-ID loss is log N;
    # semantic loss log(num_classes); identical features make every
    # instance logit equal, so that loss is log(number of valid masks).
    y_true, y_pred = random_example(3, batch=1, n=5, void_fraction=0.0)
    y_pred = {k: np.zeros_like(v) for k, v in y_pred.items()}
    y_true[common.SEMANTIC_LOSS_WEIGHT_KEY][:] = 1.0
    y_pred[common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY][..., 0] = 1.0
    out = to_np(loss_fn(y_true, y_pred))
    ref = reference_losses(y_true, y_pred)
    np.testing.assert_allclose(out[common.MASK_ID_CROSS_ENTROPY_LOSS],
                               [W_ID * np.log(5)], rtol=1e-6)
    np.testing.assert_allclose(out[common.SEMANTIC_LOSS],
                               [W_SEM * np.log(5)], rtol=1e-6)
    sem = y_true[common.GT_SEMANTIC_KEY][0, ::2, ::2]
    tid = y_true[common.GT_THING_ID_MASK_KEY][0, ::2, ::2]
    num_valid = len(np.unique(tid[tid >= 0])) + len(
        np.intersect1d(np.unique(sem), STUFF))
    np.testing.assert_allclose(out[common.INSTANCE_DISCRIMINATION_LOSS],
                               [W_INST * np.log(num_valid)], rtol=1e-6)
    assert_matches_reference(out, ref)


# ---------------------------------------------------------------------------
# Against the numpy reference.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_matches_reference_random(loss_fn, seed):
    y_true, y_pred = random_example(seed)
    out = to_np(loss_fn(y_true, y_pred))
    assert set(out) == set(TERMS) | {common.TOTAL_LOSS}
    for value in out.values():
        assert value.shape == (2,) and value.dtype == np.float32
    assert_matches_reference(out, reference_losses(y_true, y_pred))


def test_top_k_matches_reference():
    loss = MaXDeepLabLoss(make_options(top_k=0.4), DESCRIPTOR)
    y_true, y_pred = random_example(11)
    out = to_np(loss(y_true, y_pred))
    assert_matches_reference(out, reference_losses(y_true, y_pred, top_k=0.4))


def test_semantic_logits_at_other_stride():
    # Semantic logits at the input resolution (stride 1) while the mask
    # outputs are at stride 2.
    y_true, y_pred = random_example(5)
    size = y_true[common.GT_SEMANTIC_KEY].shape[1]
    y_pred[common.PRED_SEMANTIC_LOGITS_KEY] = np.random.default_rng(0).normal(
        size=(2, size, size, 5)).astype(np.float32)
    out = to_np(MaXDeepLabLoss(make_options(), DESCRIPTOR)(y_true, y_pred))
    assert_matches_reference(out, reference_losses(y_true, y_pred))


def test_enabled_terms_follow_options():
    options = text_format.Parse("pq_style_loss { weight: 2.0 }",
                                trainer_pb2.LossOptions())
    loss = MaXDeepLabLoss(options, DESCRIPTOR)
    assert loss.loss_terms == (common.PQ_STYLE_LOSS_CLASS_TERM,
                               common.PQ_STYLE_LOSS_MASK_DICE_TERM)
    y_true, y_pred = random_example(2)
    del y_pred[common.PRED_SEMANTIC_LOGITS_KEY]
    out = to_np(loss(y_true, y_pred))
    ref = reference_losses(y_true, dict(
        y_pred, **{common.PRED_SEMANTIC_LOGITS_KEY: np.zeros((2, 4, 4, 5))}),
        weights=dict(pq=2.0))
    assert set(out) == set(loss.loss_terms) | {common.TOTAL_LOSS}
    np.testing.assert_allclose(
        out[common.TOTAL_LOSS],
        ref[common.PQ_STYLE_LOSS_CLASS_TERM] +
        ref[common.PQ_STYLE_LOSS_MASK_DICE_TERM], rtol=2e-5)
    # A set field with weight 0 is reported as zeros.
    zero = MaXDeepLabLoss(make_options(inst=0.0), DESCRIPTOR)
    out = to_np(zero(*random_example(2)))
    np.testing.assert_array_equal(out[common.INSTANCE_DISCRIMINATION_LOSS],
                                  [0.0, 0.0])


def test_bad_inputs_are_named(loss_fn):
    y_true, y_pred = random_example(0)
    bad = dict(y_pred)
    bad[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY] = np.zeros((2, 6, 4),
                                                             np.float32)
    with pytest.raises(ValueError,
                       match=common.PRED_TRANSFORMER_CLASS_LOGITS_KEY):
        loss_fn(y_true, bad)
    bad = dict(y_pred)
    del bad[common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY]
    with pytest.raises(ValueError,
                       match=common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY):
        loss_fn(y_true, bad)
    with pytest.raises(ValueError, match="semantic_loss.name"):
        MaXDeepLabLoss(text_format.Parse(
            'semantic_loss { name: "focal" }', trainer_pb2.LossOptions()),
            DESCRIPTOR)


# ---------------------------------------------------------------------------
# Properties.
# ---------------------------------------------------------------------------

def test_invariant_to_permuting_slots(loss_fn):
    y_true, y_pred = random_example(7, n=6)
    perm = np.random.default_rng(1).permutation(6)
    permuted = dict(y_pred)
    permuted[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY] = y_pred[
        common.PRED_TRANSFORMER_CLASS_LOGITS_KEY][:, perm]
    permuted[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY] = y_pred[
        common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY][..., perm]
    a = to_np(loss_fn(y_true, y_pred))
    b = to_np(loss_fn(y_true, permuted))
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=key)


def ideal_predictions(y_true, n, h=4, stride=2):
    """Logits that agree with the ground truth (one slot per valid mask)."""
    sem = y_true[common.GT_SEMANTIC_KEY][:, ::stride, ::stride]
    tid = y_true[common.GT_THING_ID_MASK_KEY][:, ::stride, ::stride]
    tcls = y_true[common.GT_THING_ID_CLASS_KEY]
    batch = sem.shape[0]
    mask_logits = np.zeros((batch, h, h, n), np.float32)
    class_logits = np.zeros((batch, n, K + 1), np.float32)
    class_logits[..., -1] = 5.0
    feat = np.zeros((batch, h, h, n), np.float32)
    for b in range(batch):
        slot = 0
        regions = [(tid[b] == t, tcls[b, t]) for t in range(tcls.shape[1])]
        regions += [(sem[b] == c, c) for c in STUFF]
        for region, cls in regions:
            if region.any():
                mask_logits[b][region, slot] = 5.0
                class_logits[b, slot] = 0.0
                class_logits[b, slot, CLASS_IDS.index(cls)] = 5.0
                feat[b][region, slot] = 1.0
                slot += 1
    sem_logits = 5.0 * np.eye(5, dtype=np.float32)[sem]
    return {common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY: mask_logits,
            common.PRED_TRANSFORMER_CLASS_LOGITS_KEY: class_logits,
            common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY: feat,
            common.PRED_SEMANTIC_LOGITS_KEY: sem_logits}


@pytest.mark.parametrize("moved,terms", [
    # Everything moves: the total decreases (each term's fixed weights move
    # too, e.g. a better class raises the Dice term's weight).
    ("all", (common.TOTAL_LOSS, common.MASK_ID_CROSS_ENTROPY_LOSS,
             common.SEMANTIC_LOSS)),
    # Only the masks move: class probabilities (the Dice weights) are fixed.
    ("masks", (common.PQ_STYLE_LOSS_MASK_DICE_TERM,
               common.MASK_ID_CROSS_ENTROPY_LOSS)),
    # Only the classes move: the Dice and void-ratio weights are fixed.
    ("classes", (common.PQ_STYLE_LOSS_CLASS_TERM,)),
    ("features", (common.INSTANCE_DISCRIMINATION_LOSS,)),
])
def test_loss_decreases_towards_ground_truth(loss_fn, moved, terms):
    y_true, noise = random_example(8, n=8, d=8, void_fraction=0.0)
    goal = ideal_predictions(y_true, n=8)
    # A weak version of the goal under noise, so that the matching pairs the
    # same slots and masks all along the path (the matching is piecewise
    # constant and may otherwise switch to a transiently worse pairing).
    start = {k: 0.3 * goal[k] + 0.5 * noise[k] for k in goal}
    keys = {
        "all": tuple(goal),
        "masks": (common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY,),
        "classes": (common.PRED_TRANSFORMER_CLASS_LOGITS_KEY,),
        "features": (common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY,),
    }[moved]
    previous = None
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        y_pred = dict(start)
        for k in keys:
            y_pred[k] = ((1 - t) * start[k] + t * goal[k]).astype(np.float32)
        out = to_np(loss_fn(y_true, y_pred))
        if previous is not None:
            for key in terms:
                assert np.all(out[key] < previous[key]), (key, t)
        previous = out
    if moved == "all":
        # At the goal the probability-driven terms are close to zero.
        assert np.all(previous[common.MASK_ID_CROSS_ENTROPY_LOSS] < 0.05 * W_ID)
        assert np.all(previous[common.SEMANTIC_LOSS] < 0.05)


def test_gradients_of_pixel_terms_match_finite_differences():
    # Mask-ID cross-entropy, instance discrimination and semantic loss have
    # no stop-gradient weights, so tf.test.compute_gradient applies directly
    # (the matching is constant near this point: a unique, clear optimum).
    y_true, y_pred = hand_example()
    loss = MaXDeepLabLoss(make_options(pq=0.0), DESCRIPTOR)
    keys = (common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY,
            common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY,
            common.PRED_SEMANTIC_LOGITS_KEY)

    def total(*tensors):
        pred = dict(y_pred)
        pred.update({k: tf.cast(v, tf.float32) for k, v in zip(keys, tensors)})
        return tf.cast(loss(y_true, pred)[common.TOTAL_LOSS], tf.float64)

    inputs = [tf.constant(y_pred[k], tf.float64) for k in keys]
    theoretical, numerical = tf.test.compute_gradient(total, inputs,
                                                      delta=1e-3)
    for th, nu in zip(theoretical, numerical):
        assert np.abs(th).max() > 1e-3
        np.testing.assert_allclose(th, nu, atol=2e-3, rtol=2e-2)


def test_pq_gradients_match_frozen_weight_finite_differences():
    # The PQ-style terms use stop-gradient weights (matched Dice, class
    # probability, void ratio). Their autodiff gradient must equal the finite
    # differences of the numpy reference with those weights frozen.
    y_true, y_pred = random_example(4, batch=1, n=5)
    loss = MaXDeepLabLoss(make_options(mask_id=0.0, inst=0.0, sem=0.0),
                          DESCRIPTOR)
    class_logits = tf.constant(y_pred[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY])
    mask_logits = tf.constant(y_pred[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY])
    with tf.GradientTape() as tape:
        tape.watch([class_logits, mask_logits])
        pred = dict(y_pred)
        pred[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY] = class_logits
        pred[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY] = mask_logits
        total = loss(y_true, pred)[common.TOTAL_LOSS][0]
    grad_class, grad_mask = tape.gradient(total, [class_logits, mask_logits])

    frozen = FrozenPQ(y_true, y_pred)
    z = y_pred[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY][0].astype(np.float64)
    m = y_pred[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY][0].astype(np.float64)
    np.testing.assert_allclose(frozen(z, m), total.numpy(), rtol=1e-5)
    num_class = _finite_difference(lambda x: frozen(x, m), z)
    num_mask = _finite_difference(lambda x: frozen(z, x), m)
    assert np.abs(num_mask).max() > 1e-4
    np.testing.assert_allclose(grad_class.numpy()[0], num_class, atol=1e-5)
    np.testing.assert_allclose(grad_mask.numpy()[0], num_mask, atol=1e-5)


def _finite_difference(f, x, eps=1e-5):
    grad = np.zeros_like(x)
    for index in itertools.product(*map(range, x.shape)):
        plus, minus = x.copy(), x.copy()
        plus[index] += eps
        minus[index] -= eps
        grad[index] = (f(plus) - f(minus)) / (2 * eps)
    return grad


class FrozenPQ:
    """PQ-style loss with the matching and the dynamic weights frozen."""

    def __init__(self, y_true, y_pred):
        ref = _reference_internals(y_true, y_pred)
        self.__dict__.update(ref)

    def __call__(self, class_logits, mask_logits):
        log_pc = _log_softmax(class_logits)
        q = np.exp(_log_softmax(mask_logits.reshape(len(self.labelled), -1)))
        class_terms = [-log_pc[i, k] * w for i, k, w in self.class_targets]
        class_term = sum(class_terms) / len(class_terms) * W_PQ
        dice_term = 0.0
        for i, m, weight in self.dice_targets:
            qi = q[:, i] * self.labelled
            dice_loss = 1 - (2 * qi[m].sum() + 1) / (qi.sum() + m.sum() + 1)
            dice_term += weight * dice_loss
        n = class_logits.shape[0]
        return class_term + dice_term * W_PQ * ALPHA / n


def _reference_internals(y_true, y_pred):
    """Matching and weights of example 0, from the same steps as the
    reference (stride 2 layout of random_example)."""
    sem = y_true[common.GT_SEMANTIC_KEY][0, ::2, ::2].ravel()
    tid = y_true[common.GT_THING_ID_MASK_KEY][0, ::2, ::2].ravel()
    tcls = y_true[common.GT_THING_ID_CLASS_KEY][0]
    masks = [(tid == t, CLASS_IDS.index(tcls[t]) if tcls[t] >= 0 else None)
             for t in range(len(tcls))]
    masks += [(sem == c, CLASS_IDS.index(c)) for c in STUFF]
    labelled = np.any([m for m, _ in masks], axis=0)
    valid = [j for j, (m, k) in enumerate(masks)
             if m.sum() > 0 and k is not None]
    non_void = sem != 0
    n = y_pred[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY].shape[-1]
    q = np.exp(_log_softmax(y_pred[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY][0]
                            .reshape(len(sem), n).astype(np.float64)))
    pc = np.exp(_log_softmax(y_pred[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY][0]
                             .astype(np.float64)))

    def dice(j, i):
        m = masks[j][0]
        return ((q[:, i] * non_void)[m].sum() /
                ((m.sum() + (q[:, i] * non_void).sum()) / 2 + 1e-5))

    sim = np.array([[dice(j, i) * pc[i, masks[j][1]] for i in range(n)]
                    for j in valid])
    rows, cols = scipy.optimize.linear_sum_assignment(-sim)
    slot_to_mask = {i: valid[r] for r, i in zip(rows, cols)}
    class_targets, dice_targets = [], []
    for i in range(n):
        if i in slot_to_mask:
            j = slot_to_mask[i]
            class_targets.append((i, masks[j][1],
                                  ALPHA * max(dice(j, i), 1e-5)))
            dice_targets.append((i, masks[j][0],
                                 max(pc[i, masks[j][1]], 1e-5)))
        else:
            ratio = q[~non_void, i].sum() / (q[:, i].sum() + 1e-5)
            class_targets.append((i, K, (1 - ALPHA) * max(ratio, 1e-5)))
    return dict(labelled=labelled, class_targets=class_targets,
                dice_targets=dice_targets)


# ---------------------------------------------------------------------------
# Edge cases, graph modes, precision.
# ---------------------------------------------------------------------------

def _edge_case(kind):
    y_true, y_pred = random_example(6, n=4, max_thing_id=6, num_things=6)
    sem = y_true[common.GT_SEMANTIC_KEY]
    tid = y_true[common.GT_THING_ID_MASK_KEY]
    tcls = y_true[common.GT_THING_ID_CLASS_KEY]
    if kind == "all_void":
        sem[:] = 0
        tid[:] = -1
        tcls[:] = -1
    elif kind == "crowd_only":
        sem[:] = 3
        tid[:] = -1
        tcls[:] = -1
    elif kind == "as_many_masks_as_slots":
        # Output pixels (rows/cols 0, 2, 4, 6): 2 things + 2 stuff = 4 masks.
        sem[:] = 2
        sem[:, 4:, :] = 4
        sem[:, :2, :2] = 3
        sem[:, 6:, 6:] = 1
        tid[:] = -1
        tid[:, :2, :2] = 0
        tid[:, 6:, 6:] = 1
        tcls[:] = -1
        tcls[:, :2] = [3, 1]
    elif kind == "more_masks_than_slots":
        pass  # 6 things + 2 stuff against 4 slots.
    return y_true, y_pred


@pytest.mark.parametrize("kind", ["all_void", "crowd_only",
                                  "as_many_masks_as_slots",
                                  "more_masks_than_slots"])
def test_edge_cases_finite_with_finite_gradients(loss_fn, kind):
    y_true, y_pred = _edge_case(kind)
    tensors = {k: tf.constant(v) for k, v in y_pred.items()}
    with tf.GradientTape() as tape:
        tape.watch(list(tensors.values()))
        out = loss_fn(y_true, tensors)
        total = tf.reduce_sum(out[common.TOTAL_LOSS])
    grads = tape.gradient(total, list(tensors.values()))
    for key, value in out.items():
        assert np.all(np.isfinite(value.numpy())), key
    for grad in grads:
        assert grad is not None and np.all(np.isfinite(grad.numpy()))
    if kind == "all_void":
        # Nothing to match: only the (void-ratio weighted) class term is left.
        for key in TERMS[1:]:
            np.testing.assert_array_equal(out[key].numpy(), 0.0)
    if kind == "as_many_masks_as_slots":
        assert_matches_reference(to_np(out), reference_losses(y_true, y_pred))


def test_more_masks_than_slots_leaves_unmatched_masks_out(loss_fn):
    y_true, y_pred = _edge_case("more_masks_than_slots")
    out = to_np(loss_fn(y_true, y_pred))
    # The reference drops unmatched masks the same way.
    assert_matches_reference(out, reference_losses(y_true, y_pred))


def test_tf_function_and_xla_match_eager(loss_fn):
    y_true, y_pred = random_example(9)
    eager = to_np(loss_fn(y_true, y_pred))
    for jit in (False, True):
        fn = tf.function(lambda a, b: loss_fn(a, b), jit_compile=jit)
        out = to_np(fn(y_true, y_pred))
        for key in eager:
            np.testing.assert_allclose(out[key], eager[key], rtol=1e-5,
                                       atol=1e-6, err_msg=f"{key} jit={jit}")

    def grads(y_pred_tensors):
        with tf.GradientTape() as tape:
            tape.watch(y_pred_tensors)
            total = tf.reduce_sum(
                loss_fn(y_true, y_pred_tensors)[common.TOTAL_LOSS])
        return tape.gradient(total, y_pred_tensors)

    tensors = {k: tf.constant(v) for k, v in y_pred.items()}
    eager_grads = grads(tensors)
    xla_grads = tf.function(grads, jit_compile=True)(tensors)
    for key in tensors:
        np.testing.assert_allclose(xla_grads[key].numpy(),
                                   eager_grads[key].numpy(), rtol=1e-4,
                                   atol=1e-6, err_msg=key)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_mixed_precision_inputs_give_float32_losses(loss_fn, dtype):
    y_true, y_pred = random_example(10)
    low = {k: tf.cast(v, dtype) for k, v in y_pred.items()}
    out = loss_fn(y_true, low)
    # Same as float32 on the rounded inputs.
    rounded = {k: tf.cast(v, tf.float32).numpy() for k, v in low.items()}
    ref = to_np(loss_fn(y_true, rounded))
    for key, value in out.items():
        assert value.dtype == tf.float32
        np.testing.assert_allclose(value.numpy(), ref[key], rtol=1e-6)
