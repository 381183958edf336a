"""Dataset descriptors: what the model, losses and evaluator need to know.

A descriptor is the one place that says how many classes a dataset has, which
are things, which label is void, and how panoptic ids are encoded. Built-in
descriptors are registered by name; a converted custom dataset stores its
descriptor as JSON beside its shards and is selected by that file's path.
"""

import dataclasses
import json
from typing import Dict, Optional, Sequence, Tuple

from max_deeplab_tf.data import builtin_datasets


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


VOID_NAME = "void"
VOID_COLOR = (0, 0, 0)


def _default_color(index: int) -> Tuple[int, int, int]:
    """A distinct, deterministic colour for classes whose JSON has none."""
    # Golden-ratio hue steps keep neighbouring ids apart.
    import colorsys
    hue = (index * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.65, 0.95)
    return (int(r * 255), int(g * 255), int(b * 255))


def descriptor_from_coco_categories(categories: Sequence[dict], name: str,
                                    label_divisor: int = 256,
                                    source: str = "categories"
                                    ) -> DatasetDescriptor:
    """Derives a descriptor from COCO panoptic `categories` JSON entries.

    The categories, sorted by their `id`, become the contiguous semantic ids
    1..N; void is 0. For COCO panoptic this is exactly deeplab2's mapping
    (things 1..80, stuff 81..133), because COCO numbers its things before
    its stuff.

    Args:
      categories: Dicts with `id` (int), `name` (str), `isthing` (0/1) and
        optionally `color` ([r, g, b]).
      name: Name of the dataset.
      label_divisor: panoptic = semantic * label_divisor + instance.
      source: What the categories were read from, for error messages.

    Returns:
      The descriptor, with class_names, colormap and category_ids filled.

    Raises:
      ValueError: naming `source` and the offending entry, on a missing or
        malformed field, a duplicate id or an empty list.
    """
    if not isinstance(categories, (list, tuple)) or not categories:
        raise ValueError(f"{source}: expected a non-empty list of categories, "
                         f"got {categories!r:.200}")
    parsed = []
    for index, category in enumerate(categories):
        where = f"{source}: category #{index}"
        if not isinstance(category, dict):
            raise ValueError(f"{where} is not a JSON object: {category!r:.200}")
        for field in ("id", "name", "isthing"):
            if field not in category:
                raise ValueError(f"{where} ({category!r:.200}) lacks "
                                 f"field {field!r}")
        cid = category["id"]
        if isinstance(cid, bool) or not isinstance(cid, int):
            raise ValueError(f"{where}: id {cid!r} is not an integer")
        if category["isthing"] not in (0, 1, True, False):
            raise ValueError(f"{where} (id {cid}): isthing "
                             f"{category['isthing']!r} is not 0 or 1")
        color = category.get("color")
        if color is not None:
            if (not isinstance(color, (list, tuple)) or len(color) != 3 or
                    not all(isinstance(c, int) and 0 <= c <= 255
                            for c in color)):
                raise ValueError(f"{where} (id {cid}): color {color!r} is not "
                                 "[r, g, b] with values in 0..255")
            color = tuple(color)
        parsed.append((cid, str(category["name"]), bool(category["isthing"]),
                       color))
    parsed.sort(key=lambda c: c[0])
    ids = [c[0] for c in parsed]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"{source}: duplicate category id(s) {duplicates}")
    if label_divisor < 2:
        raise ValueError(f"label_divisor {label_divisor} must be at least 2")
    class_names = (VOID_NAME,) + tuple(c[1] for c in parsed)
    colormap = (VOID_COLOR,) + tuple(
        c[3] if c[3] is not None else _default_color(i + 1)
        for i, c in enumerate(parsed))
    return DatasetDescriptor(
        name=name,
        num_classes=len(parsed) + 1,
        ignore_label=0,
        label_divisor=int(label_divisor),
        thing_class_ids=tuple(i + 1 for i, c in enumerate(parsed) if c[2]),
        class_names=class_names,
        colormap=colormap,
        category_ids=(-1,) + tuple(ids))


def category_to_class(descriptor: DatasetDescriptor) -> Dict[int, int]:
    """Maps source category ids to semantic ids (void excluded).

    Raises:
      ValueError: if the descriptor has no category_ids.
    """
    if not descriptor.category_ids:
        raise ValueError(f"dataset {descriptor.name!r}: descriptor has no "
                         "category_ids")
    return {cid: i for i, cid in enumerate(descriptor.category_ids)
            if i != descriptor.ignore_label}


def same_classes(a: DatasetDescriptor, b: DatasetDescriptor) -> bool:
    """True when two descriptors label pixels identically (names aside)."""
    return (a.num_classes == b.num_classes and
            a.ignore_label == b.ignore_label and
            a.label_divisor == b.label_divisor and
            tuple(a.thing_class_ids) == tuple(b.thing_class_ids) and
            tuple(a.category_ids) == tuple(b.category_ids))


_REGISTRY: Dict[str, DatasetDescriptor] = {}


def register(descriptor: DatasetDescriptor) -> DatasetDescriptor:
    """Registers a built-in descriptor under its name."""
    _REGISTRY[descriptor.name] = descriptor
    return descriptor


def registered_names() -> Sequence[str]:
    """Names of the built-in (and otherwise registered) descriptors."""
    _register_builtins()
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


_BUILTINS_LOADED = False


def _register_builtins() -> None:
    # Built on first use rather than at import: COCO's table is long.
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    for name, table, label_divisor in builtin_datasets.BUILTIN_DATASETS:
        register(descriptor_from_coco_categories(
            builtin_datasets.categories_as_json(table), name=name,
            label_divisor=label_divisor))


def maybe_get(name_or_path: str) -> Optional[DatasetDescriptor]:
    """Like get_dataset_descriptor but returns None when unknown."""
    try:
        return get_dataset_descriptor(name_or_path)
    except ValueError:
        return None
