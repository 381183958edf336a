"""Built-in dataset descriptors: COCO panoptic and the synthetic dataset.

COCO panoptic follows deeplab2: the 133 categories of COCO panoptic 2017 map to
contiguous ids 1..133 in ascending COCO category id (which puts the 80 things
first, then the 53 stuff categories), void is 0, label divisor 256, 134
classes including void.

The synthetic dataset (max_deeplab_tf.data.synthetic) has three thing and
three stuff categories with deliberately non-contiguous COCO-style ids, so its
conversion exercises the same id mapping as COCO's.

This module is data only and imports nothing of the package: dataset_info
builds and registers the descriptors from `BUILTIN_DATASETS`, so the two
modules do not import each other.
"""

# COCO panoptic 2017 categories: (category id, name, isthing, RGB colour), in
# ascending category id. Colours are the ones of COCO's panoptic API.
COCO_CATEGORIES = (
    (1, "person", 1, (220, 20, 60)),
    (2, "bicycle", 1, (119, 11, 32)),
    (3, "car", 1, (0, 0, 142)),
    (4, "motorcycle", 1, (0, 0, 230)),
    (5, "airplane", 1, (106, 0, 228)),
    (6, "bus", 1, (0, 60, 100)),
    (7, "train", 1, (0, 80, 100)),
    (8, "truck", 1, (0, 0, 70)),
    (9, "boat", 1, (0, 0, 192)),
    (10, "traffic light", 1, (250, 170, 30)),
    (11, "fire hydrant", 1, (100, 170, 30)),
    (13, "stop sign", 1, (220, 220, 0)),
    (14, "parking meter", 1, (175, 116, 175)),
    (15, "bench", 1, (250, 0, 30)),
    (16, "bird", 1, (165, 42, 42)),
    (17, "cat", 1, (255, 77, 255)),
    (18, "dog", 1, (0, 226, 252)),
    (19, "horse", 1, (182, 182, 255)),
    (20, "sheep", 1, (0, 82, 0)),
    (21, "cow", 1, (120, 166, 157)),
    (22, "elephant", 1, (110, 76, 0)),
    (23, "bear", 1, (174, 57, 255)),
    (24, "zebra", 1, (199, 100, 0)),
    (25, "giraffe", 1, (72, 0, 118)),
    (27, "backpack", 1, (255, 179, 240)),
    (28, "umbrella", 1, (0, 125, 92)),
    (31, "handbag", 1, (209, 0, 151)),
    (32, "tie", 1, (188, 208, 182)),
    (33, "suitcase", 1, (0, 220, 176)),
    (34, "frisbee", 1, (255, 99, 164)),
    (35, "skis", 1, (92, 0, 73)),
    (36, "snowboard", 1, (133, 129, 255)),
    (37, "sports ball", 1, (78, 180, 255)),
    (38, "kite", 1, (0, 228, 0)),
    (39, "baseball bat", 1, (174, 255, 243)),
    (40, "baseball glove", 1, (45, 89, 255)),
    (41, "skateboard", 1, (134, 134, 103)),
    (42, "surfboard", 1, (145, 148, 174)),
    (43, "tennis racket", 1, (255, 208, 186)),
    (44, "bottle", 1, (197, 226, 255)),
    (46, "wine glass", 1, (171, 134, 1)),
    (47, "cup", 1, (109, 63, 54)),
    (48, "fork", 1, (207, 138, 255)),
    (49, "knife", 1, (151, 0, 95)),
    (50, "spoon", 1, (9, 80, 61)),
    (51, "bowl", 1, (84, 105, 51)),
    (52, "banana", 1, (74, 65, 105)),
    (53, "apple", 1, (166, 196, 102)),
    (54, "sandwich", 1, (208, 195, 210)),
    (55, "orange", 1, (255, 109, 65)),
    (56, "broccoli", 1, (0, 143, 149)),
    (57, "carrot", 1, (179, 0, 194)),
    (58, "hot dog", 1, (209, 99, 106)),
    (59, "pizza", 1, (5, 121, 0)),
    (60, "donut", 1, (227, 255, 205)),
    (61, "cake", 1, (147, 186, 208)),
    (62, "chair", 1, (153, 69, 1)),
    (63, "couch", 1, (3, 95, 161)),
    (64, "potted plant", 1, (163, 255, 0)),
    (65, "bed", 1, (119, 0, 170)),
    (67, "dining table", 1, (0, 182, 199)),
    (70, "toilet", 1, (0, 165, 120)),
    (72, "tv", 1, (183, 130, 88)),
    (73, "laptop", 1, (95, 32, 0)),
    (74, "mouse", 1, (130, 114, 135)),
    (75, "remote", 1, (110, 129, 133)),
    (76, "keyboard", 1, (166, 74, 118)),
    (77, "cell phone", 1, (219, 142, 185)),
    (78, "microwave", 1, (79, 210, 114)),
    (79, "oven", 1, (178, 90, 62)),
    (80, "toaster", 1, (65, 70, 15)),
    (81, "sink", 1, (127, 167, 115)),
    (82, "refrigerator", 1, (59, 105, 106)),
    (84, "book", 1, (142, 108, 45)),
    (85, "clock", 1, (196, 172, 0)),
    (86, "vase", 1, (95, 54, 80)),
    (87, "scissors", 1, (128, 76, 255)),
    (88, "teddy bear", 1, (201, 57, 1)),
    (89, "hair drier", 1, (246, 0, 122)),
    (90, "toothbrush", 1, (191, 162, 208)),
    (92, "banner", 0, (255, 255, 128)),
    (93, "blanket", 0, (147, 211, 203)),
    (95, "bridge", 0, (150, 100, 100)),
    (100, "cardboard", 0, (168, 171, 172)),
    (107, "counter", 0, (146, 112, 198)),
    (109, "curtain", 0, (210, 170, 100)),
    (112, "door-stuff", 0, (92, 136, 89)),
    (118, "floor-wood", 0, (218, 88, 184)),
    (119, "flower", 0, (241, 129, 0)),
    (122, "fruit", 0, (217, 17, 255)),
    (125, "gravel", 0, (124, 74, 181)),
    (128, "house", 0, (70, 70, 70)),
    (130, "light", 0, (255, 228, 255)),
    (133, "mirror-stuff", 0, (154, 208, 0)),
    (138, "net", 0, (193, 0, 92)),
    (141, "pillow", 0, (76, 91, 113)),
    (144, "platform", 0, (255, 180, 195)),
    (145, "playingfield", 0, (106, 154, 176)),
    (147, "railroad", 0, (230, 150, 140)),
    (148, "river", 0, (60, 143, 255)),
    (149, "road", 0, (128, 64, 128)),
    (151, "roof", 0, (92, 82, 55)),
    (154, "sand", 0, (254, 212, 124)),
    (155, "sea", 0, (73, 77, 174)),
    (156, "shelf", 0, (255, 160, 98)),
    (159, "snow", 0, (255, 255, 255)),
    (161, "stairs", 0, (104, 84, 109)),
    (166, "tent", 0, (169, 164, 131)),
    (168, "towel", 0, (225, 199, 255)),
    (171, "wall-brick", 0, (137, 54, 74)),
    (175, "wall-stone", 0, (135, 158, 223)),
    (176, "wall-tile", 0, (7, 246, 231)),
    (177, "wall-wood", 0, (107, 255, 200)),
    (178, "water-other", 0, (58, 41, 149)),
    (180, "window-blind", 0, (183, 121, 142)),
    (181, "window-other", 0, (255, 73, 97)),
    (184, "tree-merged", 0, (107, 142, 35)),
    (185, "fence-merged", 0, (190, 153, 153)),
    (186, "ceiling-merged", 0, (146, 139, 141)),
    (187, "sky-other-merged", 0, (70, 130, 180)),
    (188, "cabinet-merged", 0, (134, 199, 156)),
    (189, "table-merged", 0, (209, 226, 140)),
    (190, "floor-other-merged", 0, (96, 36, 108)),
    (191, "pavement-merged", 0, (96, 96, 96)),
    (192, "mountain-merged", 0, (64, 170, 64)),
    (193, "grass-merged", 0, (152, 251, 152)),
    (194, "dirt-merged", 0, (208, 229, 228)),
    (195, "paper-merged", 0, (206, 186, 171)),
    (196, "food-other-merged", 0, (152, 161, 64)),
    (197, "building-other-merged", 0, (116, 112, 0)),
    (198, "rock-merged", 0, (0, 114, 143)),
    (199, "wall-other-merged", 0, (102, 102, 156)),
    (200, "rug-merged", 0, (250, 141, 255)),
)

# The synthetic dataset's categories, same layout. Things are shapes told
# apart by outline only (their colours are random); stuff are textured
# regions.
SYNTHETIC_CATEGORIES = (
    (1, "disc", 1, (220, 20, 60)),
    (3, "box", 1, (0, 0, 142)),
    (7, "triangle", 1, (250, 170, 30)),
    (20, "sky", 0, (70, 130, 180)),
    (25, "ground", 0, (152, 161, 64)),
    (31, "water", 0, (58, 41, 149)),
)


def categories_as_json(table):
    """COCO-JSON `categories` entries of one of the tables above."""
    return [{"id": cid, "name": name, "supercategory": name, "isthing": thing,
             "color": list(color)} for cid, name, thing, color in table]


# The built-in datasets: (name, category table, label divisor). dataset_info
# registers a descriptor for each.
BUILTIN_DATASETS = (
    ("coco_panoptic", COCO_CATEGORIES, 256),
    ("synthetic_panoptic", SYNTHETIC_CATEGORIES, 256),
)
