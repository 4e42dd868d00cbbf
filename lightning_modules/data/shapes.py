"""The captioning demo corpus, generated locally: small images of coloured shapes and captions that describe them.

A scene is one object at a place ("a red circle on the left", "a blue square at the top") or two objects in a
relation ("a red circle above a blue square", also captioned "a blue square below a red circle"). Each image renders
its scene with random jitter (position, size, colour noise), deterministically from a seed. The splits are disjoint
by scene content: validation and test scenes (their colour / shape / place / relation combinations) never appear in
training, so a model must compose what it learned, not recall captions.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
from filelock import FileLock

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 90, 235), "yellow": (235, 215, 40),
    "purple": (160, 60, 200),
}
SHAPES = ("circle", "square", "triangle", "diamond")
PLACES = ("on the left", "on the right", "at the top", "at the bottom")
RELATIONS = ("above", "left of")  # "below" / "right of" are the same scenes seen from the other object

#: A scene: ((colour, shape), place) for one object, or ((colour, shape), relation, (colour, shape)) for two.
Scene = tuple


def all_scenes() -> list[Scene]:
    """Every scene, in a fixed order: 5 colours x 4 shapes x 4 places + 20 x 19 ordered pairs x 2 relations."""
    objects = list(itertools.product(COLOURS, SHAPES))
    singles = [(obj, place) for obj in objects for place in PLACES]
    pairs = [(a, relation, b) for a, b in itertools.permutations(objects, 2) for relation in RELATIONS]
    return singles + pairs


def captions_of(scene: Scene) -> list[str]:
    """The reference captions of a scene (two for a pair: from either object's point of view)."""
    def name(obj: tuple[str, str]) -> str:
        return f"a {obj[0]} {obj[1]}"

    if len(scene) == 2:
        return [f"{name(scene[0])} {scene[1]}"]
    first, relation, second = scene
    if relation == "above":
        return [f"{name(first)} above {name(second)}", f"{name(second)} below {name(first)}"]
    return [f"{name(first)} to the left of {name(second)}", f"{name(second)} to the right of {name(first)}"]


def draw_object(image: np.ndarray, obj: tuple[str, str], centre: tuple[float, float], radius: float,
                rng: np.random.Generator) -> None:
    """Paint one shape into `image` (H, W, 3 uint8) in place."""
    height, width, _ = image.shape
    y, x = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5  # pixel centres
    cy, cx = centre
    dy, dx = y - cy, x - cx
    shape = obj[1]
    if shape == "circle":
        mask = dx**2 + dy**2 <= radius**2
    elif shape == "square":
        mask = np.maximum(np.abs(dx), np.abs(dy)) <= radius * 0.8
    elif shape == "diamond":
        mask = np.abs(dx) + np.abs(dy) <= radius * 1.1
    else:  # an upward triangle: apex at the top, base at the bottom
        mask = (dy <= radius * 0.8) & (np.abs(dx) <= (dy + radius) * 0.6)
    colour = np.clip(np.array(COLOURS[obj[0]]) + rng.integers(-20, 21, size=3), 0, 255)
    image[mask] = colour


def render(scene: Scene, rng: np.random.Generator, image_size: int = 32) -> np.ndarray:
    """One (image_size, image_size, 3) uint8 picture of `scene` on a dark, slightly noisy background."""
    s = image_size
    image = rng.integers(0, 30, size=(s, s, 3)).astype(np.uint8)

    def radius() -> float:
        return rng.uniform(0.14, 0.17) * s

    def jitter(low: float, high: float) -> float:  # a random coordinate between two fractions of the side
        return rng.uniform(low, high) * s

    if len(scene) == 2:
        obj, place = scene
        along, across = jitter(0.2, 0.3), jitter(0.35, 0.65)  # near one edge, anywhere in the middle band
        centre = {"on the left": (across, along), "on the right": (across, s - along),
                  "at the top": (along, across), "at the bottom": (s - along, across)}[place]
        draw_object(image, obj, centre, radius(), rng)
        return image
    first, relation, second = scene
    near, far = jitter(0.2, 0.3), s - jitter(0.2, 0.3)  # along the relation's axis
    side_a, side_b = jitter(0.2, 0.8), jitter(0.2, 0.8)  # free along the other axis
    if relation == "above":
        centres = ((near, side_a), (far, side_b))
    else:  # "left of"
        centres = ((side_a, near), (side_b, far))
    draw_object(image, first, centres[0], radius(), rng)
    draw_object(image, second, centres[1], radius(), rng)
    return image


def scene_splits(validation_fraction: float, test_fraction: float, seed: int) -> dict[str, list[Scene]]:
    """All scenes shuffled by `seed` and cut into disjoint train / validation / test scene lists."""
    scenes = all_scenes()
    order = np.random.default_rng(seed).permutation(len(scenes))
    n_val, n_test = round(validation_fraction * len(scenes)), round(test_fraction * len(scenes))
    shuffled = [scenes[i] for i in order]
    return {"validation": shuffled[:n_val], "test": shuffled[n_val:n_val + n_test],
            "train": shuffled[n_val + n_test:]}


def write_shapes_dataset(folder: str | os.PathLike, num_train: int, num_validation: int, num_test: int,
                         image_size: int = 32, seed: int = 0, validation_fraction: float = 0.1,
                         test_fraction: float = 0.1) -> Path:
    """Write the corpus as a hub-style dataset folder (README.md `configs:` + data/<split>-*.parquet, columns
    `image` (PNG) and `captions` (list of str)); kept if already there. `load_dataset(folder)` reads it."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):  # DDP ranks started together: one writes, the others wait and read
        if not (folder / "README.md").is_file():  # else written by an earlier run with the same arguments
            _write_splits(folder, num_train, num_validation, num_test, image_size, seed, validation_fraction,
                          test_fraction)
    return folder


def _write_splits(folder: Path, num_train: int, num_validation: int, num_test: int, image_size: int, seed: int,
                  validation_fraction: float, test_fraction: float) -> None:
    import datasets

    for name, value, minimum in (("num_train", num_train, 1), ("num_validation", num_validation, 1),
                                 ("num_test", num_test, 1), ("image_size", image_size, 8), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    (partial / "data").mkdir(parents=True, exist_ok=True)
    splits = scene_splits(validation_fraction, test_fraction, seed)
    sizes = {"train": num_train, "validation": num_validation, "test": num_test}
    features = datasets.Features({"image": datasets.Image(), "captions": datasets.List(datasets.Value("string")),
                                  "scene": datasets.Value("string")})
    for index, (split, count) in enumerate(sizes.items()):
        rng = np.random.default_rng([seed, index])
        scenes = splits[split]
        picks = rng.integers(0, len(scenes), size=count)
        rows = {"image": [], "captions": [], "scene": []}
        for pick in picks:
            scene = scenes[pick]
            rows["image"].append({"bytes": png_bytes(render(scene, rng, image_size)), "path": None})
            rows["captions"].append(captions_of(scene))
            rows["scene"].append(repr(scene))
        table = datasets.Dataset.from_dict(rows, features=features)
        table.to_parquet(str(partial / "data" / f"{split}-00000-of-00001.parquet"))
    entries = "".join(f"  - split: {split}\n    path: data/{split}-*.parquet\n" for split in sizes)
    (partial / "README.md").write_text(f"---\nconfigs:\n- config_name: default\n  data_files:\n{entries}---\n"
                                       "Generated coloured-shapes captioning corpus "
                                       "(lightning_modules/data/shapes.py).\n")
    os.replace(partial, folder)


def png_bytes(array: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


__all__ = ["all_scenes", "captions_of", "render", "scene_splits", "write_shapes_dataset", "COLOURS", "SHAPES"]
