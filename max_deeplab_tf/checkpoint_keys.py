"""Object-based checkpoint keys of the variables below a Keras 3 model.

tf.train.Checkpoint stores a variable under its shortest (breadth-first,
first path wins) path of attribute names from the checkpoint's root, e.g.
'encoder/_stage5/_block1/_conv1_bn/gamma/.ATTRIBUTES/VARIABLE_VALUE'. Both
our own checkpoints (`max_deeplab_tf.training.checkpoints`) and the mapping
of deeplab2's checkpoints onto our model
(`max_deeplab_tf.model.deeplab2_variable_map`) need those paths without
writing a checkpoint; `walk` is the one place that computes them.

Keras 3 keeps lists and dicts of layers in its own collection types, which
TensorFlow's trackable view does not follow; `trackable_children` adds them,
so a model that holds its blocks in a list does not silently lose their
weights.
"""

import collections
from typing import Iterator, Mapping, Tuple, Union

import keras
import tensorflow as tf

# Suffix of a variable's value under its object path.
VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
# Top-level checkpoint keys that are never model weights (trainer and
# deeplab2 checkpoints).
NON_MODEL_PREFIXES = ("optimizer/", "backbone_optimizer/", "global_step",
                      "save_counter", "train_step/",
                      "_CHECKPOINTABLE_OBJECT_GRAPH")

_Trackable = tf.__internal__.tracking.Trackable


def escape_name(name: str) -> str:
    """A local name as tf.train.Checkpoint writes it ('.' -> '..', '/' -> '.S')."""
    return name.replace(".", "..").replace("/", ".S")


def is_variable(obj) -> bool:
    return isinstance(obj, (tf.Variable, keras.Variable))


def _is_node(value) -> bool:
    return isinstance(value, (list, tuple, dict, _Trackable))


def _holds_trackables(value) -> bool:
    items = value.values() if isinstance(value, dict) else value
    for item in items:
        if isinstance(item, (list, tuple, dict)):
            if _holds_trackables(item):
                return True
        elif isinstance(item, _Trackable):
            return True
    return False


def trackable_children(obj) -> "collections.OrderedDict[str, object]":
    """Named children of an object for checkpointing, Keras-3 aware.

    Args:
      obj: A trackable, or a list, tuple or dict of them (a dict is a
        virtual root whose keys are the children's names, the way
        tf.train.Checkpoint(**items) sees its keyword arguments).

    Returns:
      Ordered dict local name (unescaped) -> child: TensorFlow's own
      children, then the Keras 3 lists and dicts of layers or variables that
      TensorFlow does not see.
    """
    if isinstance(obj, (list, tuple)):
        return collections.OrderedDict(
            (str(i), v) for i, v in enumerate(obj) if _is_node(v))
    if isinstance(obj, dict):
        return collections.OrderedDict(
            (str(k), v) for k, v in obj.items() if _is_node(v))
    children = collections.OrderedDict(
        tf.train.TrackableView(obj).children(obj))
    for name in getattr(obj, "_tracked", ()):
        if name in children:
            continue
        value = getattr(obj, name, None)
        if isinstance(value, (list, tuple, dict)) and _holds_trackables(value):
            children[name] = value
    return children


def walk_edges(root: Union[_Trackable, Mapping[str, object]]
               ) -> Iterator[Tuple[object, str, object]]:
    """Breadth-first (parent, local name, child) edges of the tree below root.

    The edges tf.train.Checkpoint keeps: each object is reached once, by the
    first edge in breadth-first order; variables are leaves.

    Args:
      root: A model, layer or other trackable, or a dict name -> trackable
        (see `trackable_children`).

    Yields:
      (parent, unescaped local name, child) for every object below root.
    """
    seen = {id(root)}
    queue = collections.deque([root])
    while queue:
        obj = queue.popleft()
        for name, child in trackable_children(obj).items():
            if id(child) in seen:
                continue
            seen.add(id(child))
            yield obj, name, child
            if not is_variable(child):
                queue.append(child)


def walk(root: Union[_Trackable, Mapping[str, object]]
         ) -> Iterator[Tuple[str, object]]:
    """Breadth-first (checkpoint path, object) pairs below `root`.

    Each object appears once, under the path tf.train.Checkpoint would save
    it under (escaped names joined by '/', without VALUE_SUFFIX).

    Args:
      root: As for `walk_edges`.

    Yields:
      (path, object) for every object reachable from root, root excluded.
    """
    paths = {id(root): ""}
    for parent, name, child in walk_edges(root):
        path = paths[id(parent)] + escape_name(name)
        paths[id(child)] = path + "/"
        yield path, child
