"""Dataset descriptors: what the model, losses and evaluator need to know.

A descriptor is the one place that says how many classes a dataset has, which
are things, which label is void, and how panoptic ids are encoded. Built-in
descriptors are registered by name; a converted custom dataset stores its
descriptor as JSON beside its shards and is selected by that file's path.
"""

import dataclasses
import json
from typing import Dict, Optional, Sequence, Tuple


@dataclasses.dataclass(frozen=True)
class DatasetDescriptor:
    """Describes a panoptic dataset.

    Attributes:
      name: Dataset name.
      num_classes: Number of semantic classes including the void class, e.g.
        134 for COCO panoptic (void 0, things 1..80, stuff 81..133).
      ignore_label: The semantic label of void pixels.
      label_divisor: panoptic = semantic * label_divisor + instance.
      thing_class_ids: Semantic ids of the thing classes (countable objects).
      class_names: Name of each semantic id, index = id (void included).
      colormap: RGB colour of each semantic id, index = id.
      category_ids: Original dataset category id of each semantic id (-1 for
        void), so predictions can be written back in the source format.
      is_video: Always False here; kept for deeplab2 parity.
    """

    name: str
    num_classes: int
    ignore_label: int
    label_divisor: int
    thing_class_ids: Tuple[int, ...]
    class_names: Tuple[str, ...] = ()
    colormap: Tuple[Tuple[int, int, int], ...] = ()
    category_ids: Tuple[int, ...] = ()
    is_video: bool = False

    @property
    def stuff_class_ids(self) -> Tuple[int, ...]:
        """Semantic ids that are neither things nor void, in ascending order."""
        things = set(self.thing_class_ids)
        return tuple(
            i for i in range(self.num_classes)
            if i != self.ignore_label and i not in things)

    @property
    def num_thing_stuff_classes(self) -> int:
        """Classes the transformer predicts before its void output."""
        return len(self.thing_class_ids) + len(self.stuff_class_ids)

    def to_json(self) -> str:
        """Serialises the descriptor (inverse of `from_json`)."""
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str, source: str = "<string>"):
        """Parses a descriptor written by `to_json`.

        Raises:
          ValueError: naming `source` and the missing or malformed field.
        """
        try:
            fields = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source}: not a JSON dataset descriptor: {e}")
        required = ("name", "num_classes", "ignore_label", "label_divisor",
                    "thing_class_ids")
        missing = [k for k in required if k not in fields]
        if missing:
            raise ValueError(
                f"{source}: dataset descriptor lacks field(s) {missing}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(
                f"{source}: unknown dataset descriptor field(s) {unknown}")
        fields["thing_class_ids"] = tuple(fields["thing_class_ids"])
        fields["class_names"] = tuple(fields.get("class_names", ()))
        fields["colormap"] = tuple(tuple(c) for c in fields.get("colormap", ()))
        fields["category_ids"] = tuple(fields.get("category_ids", ()))
        return cls(**fields)


_REGISTRY: Dict[str, DatasetDescriptor] = {}


def register(descriptor: DatasetDescriptor) -> DatasetDescriptor:
    """Registers a built-in descriptor under its name."""
    _REGISTRY[descriptor.name] = descriptor
    return descriptor


def registered_names() -> Sequence[str]:
    return tuple(sorted(_REGISTRY))


def get_dataset_descriptor(name_or_path: str) -> DatasetDescriptor:
    """Returns a built-in descriptor by name, or reads one from a JSON path.

    Raises:
      ValueError: if the name is unknown and no such file exists.
    """
    _register_builtins()
    if name_or_path in _REGISTRY:
        return _REGISTRY[name_or_path]
    import tensorflow as tf  # gfile, so that gs:// descriptors work.

    if name_or_path.endswith(".json") and tf.io.gfile.exists(name_or_path):
        with tf.io.gfile.GFile(name_or_path, "r") as f:
            return DatasetDescriptor.from_json(f.read(), source=name_or_path)
    raise ValueError(
        f"unknown dataset {name_or_path!r}: expected one of "
        f"{list(registered_names())} or the path of a dataset descriptor "
        "JSON written by max_deeplab_tf.data.build_coco_panoptic")


def _register_builtins() -> None:
    # Imported lazily: the built-in tables are long.
    if _REGISTRY:
        return
    from max_deeplab_tf.data import builtin_datasets  # noqa: F401


def maybe_get(name_or_path: str) -> Optional[DatasetDescriptor]:
    """Like get_dataset_descriptor but returns None when unknown."""
    try:
        return get_dataset_descriptor(name_or_path)
    except ValueError:
        return None
