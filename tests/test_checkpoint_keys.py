"""checkpoint_keys.walk against the keys tf.train.Checkpoint actually writes."""

import keras
import tensorflow as tf

from max_deeplab_tf import checkpoint_keys


def written_variable_keys(tmp_path, **items):
    """Keys (without VALUE_SUFFIX) of the variables a real checkpoint holds."""
    prefix = tf.train.Checkpoint(**items).save(str(tmp_path / "ckpt"))
    suffix = checkpoint_keys.VALUE_SUFFIX
    return {name[:-len(suffix)] for name, _ in tf.train.list_variables(prefix)
            if name.endswith(suffix) and not name.startswith("save_counter")}


def walked_variable_keys(root):
    return {path for path, obj in checkpoint_keys.walk(root)
            if checkpoint_keys.is_variable(obj)}


class Leaf(tf.Module):

    def __init__(self, name):
        super().__init__(name=name)
        self.weight = tf.Variable(1.0)


class Tree(tf.Module):
    """tf.Module tracks lists and dicts natively, so tf.train.Checkpoint's
    keys are an independent truth for the breadth-first paths."""

    def __init__(self, first_block=None):
        super().__init__()
        self.shared = tf.Variable(2.0)
        self.blocks = [first_block or Leaf("a"), Leaf("b")]
        self.by_name = {"x.y/z": Leaf("c")}
        # The same variable deeper down: the shorter path must win.
        self.deep = Leaf("d")
        self.deep.alias = self.shared


def test_walk_matches_checkpoint_keys_of_a_module_tree(tmp_path):
    tree = Tree()
    written = written_variable_keys(tmp_path, tree=tree)
    walked = {"tree/" + key for key in walked_variable_keys(tree)}
    assert walked == written
    # Escaping and first-path-wins, spelled out.
    assert "tree/by_name/x..y.Sz/weight" in walked
    assert "tree/shared" in walked
    assert not any("alias" in key for key in walked)


def test_walk_of_a_dict_is_a_checkpoint_of_its_items(tmp_path):
    first = Leaf("a")
    items = {"first": first, "second": Tree(first_block=first)}  # twice
    assert walked_variable_keys(items) == written_variable_keys(
        tmp_path, **items)
    assert "first/weight" in walked_variable_keys(items)


class KerasBlock(keras.layers.Layer):

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.stack = [keras.layers.Dense(2), keras.layers.Dense(2)]

    def call(self, x):
        for layer in self.stack:
            x = layer(x)
        return x


def test_walk_follows_keras3_lists_that_tensorflow_does_not():
    block = KerasBlock()
    block(tf.zeros([1, 3]))
    # Hand-derived from the attribute names (Keras 3's Dense keeps its
    # kernel as `_kernel`); TensorFlow's own view stops at the Keras list,
    # which is why trackable_children exists.
    assert walked_variable_keys(block) == {
        "stack/0/_kernel", "stack/0/bias", "stack/1/_kernel", "stack/1/bias"}
    assert "stack" not in dict(tf.train.TrackableView(block).children(block))
    edges = [(name, child) for parent, name, child
             in checkpoint_keys.walk_edges(block) if parent is block]
    assert [name for name, _ in edges] == ["stack"]


def test_escape_name():
    assert checkpoint_keys.escape_name("a.b/c") == "a..b.Sc"
