"""Per-sample transforms from YAML lists and presets, the derived eval pipeline, normalisation
stats, and the labelled preview grid. All images are generated here."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from taolu.data.decode import fit_to_size
from taolu.data.preview import (
    GAP,
    grid_tensor,
    preview_grid,
    sample_augmented,
    sample_indices,
    save_preview,
)
from taolu.data.transform_list import KEPT_FOR_EVAL, TRANSFORM_NAMES, parse_transform_list
from taolu.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SamplePipeline,
    build_eval_pipeline,
    build_train_pipeline,
    normalization_stats,
    preset_for,
)
from taolu.errors import ConfigError, DataError

# One entry per allowed name, written as a user would write it in a config file.
EVERY_ENTRY_YAML = """
- {name: ToTensor}
- {name: ToImage}
- {name: ToDtype, args: {dtype: float32, scale: true}}
- {name: ToPureTensor}
- {name: Normalize, args: {mean: [0.5], std: [0.25]}}
- name: Compose
  args: {transforms: [{name: RandomHorizontalFlip}, {name: Resize, args: {size: 30}}]}
- {name: Resize, args: {size: 36}}
- {name: CenterCrop, args: {size: 24}}
- {name: Pad, args: {padding: 2}}
- {name: Grayscale}
- {name: RandomCrop, args: {size: 24, padding: 2}}
- {name: RandomResizedCrop, args: {size: 32, scale: [0.35, 1.0]}}
- {name: RandomHorizontalFlip, args: {p: 0.5}}
- {name: RandomVerticalFlip}
- {name: RandomRotation, args: {degrees: 15}}
- {name: RandomAffine, args: {degrees: 10, translate: [0.1, 0.1]}}
- {name: RandomPerspective, args: {distortion_scale: 0.3, p: 1.0}}
- {name: ColorJitter, args: {brightness: 0.3, contrast: 0.3, saturation: 0.3, hue: 0.1}}
- {name: GaussianBlur, args: {kernel_size: 3, sigma: [0.1, 1.5]}}
- {name: RandomGrayscale, args: {p: 1.0}}
- {name: RandomErasing, args: {p: 1.0, value: random}}
- {name: AutoAugment, args: {policy: cifar10}}
- {name: RandAugment, args: {num_ops: 2, magnitude: 9}}
- {name: TrivialAugmentWide}
"""
EVERY_ENTRY = yaml.safe_load(EVERY_ENTRY_YAML)

# The tutorial's CIFAR-10 list, spelled the way its code spells it.
TUTORIAL_YAML = """
- name: Compose
  args:
    transforms:
      - name: transforms.ToTensor
      - name: transforms.Resize
        args: {size: 32}
      - name: transforms.RandomHorizontalFlip
      - name: transforms.RandomCrop
        args: {size: 32, padding: 4}
      - name: transforms.Normalize
        args: {mean: [0.4914, 0.4822, 0.4465], std: [0.247, 0.243, 0.261]}
"""

RANDOM_SPEC_YAML = """
- {name: RandomResizedCrop, args: {size: 32, scale: [0.35, 1.0], interpolation: bilinear}}
- {name: RandomHorizontalFlip}
- {name: RandomRotation, args: {degrees: 20}}
- {name: ColorJitter, args: {brightness: 0.4}}
- {name: RandAugment}
- {name: GaussianBlur, args: {kernel_size: 3}}
- {name: RandomErasing, args: {p: 1.0}}
"""


def random_image(channels: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (channels, height, width), generator=generator, dtype=torch.uint8)


def left_bright_image(channels: int, side: int) -> torch.Tensor:
    """White left half, black right half: a mirror image is easy to tell from the original."""
    image = torch.zeros(channels, side, side, dtype=torch.uint8)
    image[:, :, : side // 2] = 255
    return image


def is_mirrored(image: torch.Tensor) -> bool:
    half = image.shape[-1] // 2
    return image[..., half:].float().mean() > image[..., :half].float().mean()


# --------------------------------------------------------------------------- every allowed name


def test_the_yaml_fixture_covers_every_allowed_name():
    assert {entry["name"] for entry in EVERY_ENTRY} == set(TRANSFORM_NAMES)


@pytest.mark.parametrize("entry", EVERY_ENTRY, ids=[e["name"] for e in EVERY_ENTRY])
@pytest.mark.parametrize(
    "shape, channels", [((3, 40, 40), 3), ((1, 28, 28), 1), ((3, 40, 40), 1), ((1, 28, 28), 3)]
)
def test_every_allowed_name_gives_uint8_at_the_size_and_channels(entry, shape, channels):
    image = random_image(*shape)
    for build in (build_train_pipeline, build_eval_pipeline):
        pipeline = build([entry], preset="none", size=(32, 32), channels=channels)
        for seed in range(3):
            out = pipeline(image, torch.Generator().manual_seed(seed))
            assert out.dtype == torch.uint8
            assert out.shape == (channels, 32, 32)


def test_the_whole_list_chained_runs_on_gray_and_colour():
    pipeline = build_train_pipeline(EVERY_ENTRY, preset="none", size=(24, 20), channels=3)
    for image in (random_image(3, 40, 40), random_image(1, 28, 28)):
        out = pipeline(image)
        assert out.dtype == torch.uint8 and out.shape == (3, 24, 20)
    assert pipeline.normalization == ((0.5,) * 3, (0.25,) * 3)


def test_float_input_in_unit_range_is_taken_as_uint8():
    image = random_image(3, 32, 32)
    pipeline = build_eval_pipeline([], size=(32, 32), channels=3)
    assert torch.equal(pipeline(image.float() / 255), image)


def test_a_transform_that_fails_on_an_image_names_itself():
    pipeline = build_train_pipeline(
        [{"name": "RandomCrop", "args": {"size": 48}}], preset="none", size=(32, 32), channels=3
    )
    with pytest.raises(DataError, match="RandomCrop.*3x40x40"):
        pipeline(random_image(3, 40, 40))


# --------------------------------------------------------------------------- the tutorial


def test_the_tutorial_list_works_and_its_normalize_is_extracted_not_applied():
    spec = yaml.safe_load(TUTORIAL_YAML)
    train = build_train_pipeline(spec, preset="none", size=(32, 32), channels=3)
    assert train.normalization == ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261))
    assert [entry["name"] for entry in train.describe()] == [
        "ToTensor",
        "Resize",
        "RandomHorizontalFlip",
        "RandomCrop",
        "Normalize",
    ]
    image = random_image(3, 32, 32)
    out = train(image)
    assert out.dtype == torch.uint8 and out.shape == (3, 32, 32)
    evaluate = build_eval_pipeline(spec, size=(32, 32), channels=3)
    assert evaluate.normalization == train.normalization
    # Resize to 32, pad 4 then centre-crop 32: a 32 px image comes back untouched, unnormalised.
    assert torch.equal(evaluate(image), image)


def test_one_normalize_value_is_broadcast_over_channels_as_torchvision_does():
    spec = [{"name": "Normalize", "args": {"mean": [0.1307], "std": [0.3081]}}]
    gray = build_train_pipeline(spec, preset="none", size=(28, 28), channels=1)
    colour = build_train_pipeline(spec, preset="none", size=(28, 28), channels=3)
    assert gray.normalization == ((0.1307,), (0.3081,))
    assert colour.normalization == ((0.1307,) * 3, (0.3081,) * 3)


def test_a_list_without_normalize_has_no_normalization():
    pipeline = build_train_pipeline([{"name": "ToTensor"}], preset="none", size=(8, 8), channels=1)
    assert pipeline.normalization is None
    assert not pipeline.has_steps


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "text, expected",
    [
        ("{name: Resize}", ["'transforms'", "list", "dict"]),
        ("Resize", ["'transforms'", "list", "str"]),
        ("[RandomCrop]", ["transforms[0]", "mapping"]),
        ("[{name: ToTensor}, {args: {size: 3}}]", ["transforms[1]", "no 'name'"]),
        ("[{name: Resize, size: 32}]", ["transforms[0]", "size", "args"]),
        (
            "[{name: ToTensor}, {name: RandomCrop, args: {sise: 32}}]",
            ["transforms[1]", "RandomCrop", "'sise'", "did you mean size", "padding"],
        ),
        (
            "[{name: GaussianBlur, args: {kernel_size: 4}}]",
            ["transforms[0]", "GaussianBlur", "kernel_size", "odd"],
        ),
        ("[{name: RandomHorizontalFlip, args: {p: 2}}]", ["transforms[0]", "'p': 2"]),
        ("[{name: RandomCrop}]", ["transforms[0]", "RandomCrop", "size"]),
        ("[{name: Resize, args: [32]}]", ["transforms[0]", "args", "mapping"]),
        ("[{name: ToTensor, args: {size: 3}}]", ["transforms[0]", "'size'", "no arguments"]),
        ("[{name: Normalize, args: {mean: [0.5], std: [0]}}]", ["transforms[0]", "std", "> 0"]),
        ("[{name: Normalize, args: {mean: [0.5, 0.5], std: [1]}}]", ["transforms[0]", "length"]),
        ("[{name: RandomErasing, args: {inplace: true}}]", ["transforms[0]", "inplace"]),
        (
            "[{name: AutoAugment, args: {policy: cifar}}]",
            ["transforms[0]", "'cifar'", "imagenet, cifar10, svhn"],
        ),
        (
            "[{name: Compose, args: {transforms: [{name: Resize, args: {size: 8}}, {name: Rsz}]}}]",
            ["transforms[0] (Compose).args.transforms[1]", "'Rsz'", "did you mean Resize"],
        ),
        ("[{name: Compose, args: {size: 3}}]", ["transforms[0]", "Compose", "transforms"]),
    ],
)
def test_bad_lists_are_refused_naming_the_entry_and_the_fault(text, expected):
    with pytest.raises(ConfigError) as caught:
        parse_transform_list(yaml.safe_load(text))
    for part in expected:
        assert part in str(caught.value)


@pytest.mark.parametrize("name", ["Lambda", "Foo", "torch.load", "RandomApply"])
def test_an_unknown_name_is_refused_listing_the_known_ones(name):
    with pytest.raises(ConfigError) as caught:
        parse_transform_list([{"name": "ToTensor"}, {"name": name}])
    message = str(caught.value)
    assert "transforms[1]" in message and repr(name) in message
    assert all(known in message for known in TRANSFORM_NAMES)


def test_normalize_with_more_means_than_channels_is_refused():
    spec = [{"name": "Normalize", "args": {"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}}]
    with pytest.raises(ConfigError, match="3 means.*1 channel"):
        build_train_pipeline(spec, preset="none", size=(28, 28), channels=1)


def test_an_unknown_preset_is_refused():
    with pytest.raises(ConfigError, match="preset.*digits, objects, photos, none"):
        build_train_pipeline(None, preset="cifar", size=(32, 32), channels=3)


# --------------------------------------------------------------------------- the eval pipeline


def test_the_eval_pipeline_is_deterministic_and_has_no_random_entries():
    spec = yaml.safe_load(RANDOM_SPEC_YAML)
    image = random_image(3, 48, 40)
    evaluate = build_eval_pipeline(spec, size=(32, 32), channels=3)
    assert {entry["name"] for entry in evaluate.describe()} <= KEPT_FOR_EVAL
    torch.manual_seed(1)
    first = evaluate(image)
    torch.manual_seed(2)
    assert torch.equal(evaluate(image), first)
    # The training pipeline of the same list really is random, so the test above means something.
    train = build_train_pipeline(spec, preset="none", size=(32, 32), channels=3)
    assert not torch.equal(train(image), train(image))


def test_random_resized_crop_becomes_resize_then_centre_crop_at_the_same_size():
    evaluate = build_eval_pipeline(yaml.safe_load(RANDOM_SPEC_YAML), size=(32, 32), channels=3)
    assert evaluate.describe() == [
        {"name": "Resize", "args": {"size": 32, "interpolation": "bilinear"}},
        {"name": "CenterCrop", "args": {"size": 32}},
    ]
    rectangular = [{"name": "RandomResizedCrop", "args": {"size": [24, 32]}}]
    assert build_eval_pipeline(rectangular, size=(24, 32), channels=3).describe() == [
        {"name": "Resize", "args": {"size": 32}},
        {"name": "CenterCrop", "args": {"size": [24, 32]}},
    ]
    # The centre of a wide image, not the whole image squashed.
    image = torch.zeros(1, 32, 64, dtype=torch.uint8)
    image[:, :, 16:48] = 200
    square = [{"name": "RandomResizedCrop", "args": {"size": 32}}]
    out = build_eval_pipeline(square, size=(32, 32), channels=1)(image)
    assert torch.equal(out, torch.full((1, 32, 32), 200, dtype=torch.uint8))


def test_random_crop_with_padding_becomes_pad_then_centre_crop():
    spec = [{"name": "RandomCrop", "args": {"size": 28, "padding": 2, "fill": 7}}]
    assert build_eval_pipeline(spec, size=(28, 28), channels=1).describe() == [
        {"name": "Pad", "args": {"padding": 2, "fill": 7}},
        {"name": "CenterCrop", "args": {"size": 28}},
    ]


def test_eval_of_flips_only_equals_plain_fit_to_size():
    spec = [{"name": "RandomHorizontalFlip", "args": {"p": 1.0}}, {"name": "RandomVerticalFlip"}]
    image = random_image(3, 40, 50)
    evaluate = build_eval_pipeline(spec, size=(32, 32), channels=3)
    assert evaluate.describe() == []
    assert torch.equal(evaluate(image), fit_to_size(image, (32, 32), "squash"))


# --------------------------------------------------------------------------- presets


def test_preset_for_chooses_by_kind_of_input():
    assert preset_for((28, 28), 1, digits=True) == "digits"
    assert preset_for((64, 64), 3, digits=True) == "digits"
    assert preset_for((32, 32), 3, digits=False) == "objects"
    assert preset_for((40, 40), 1, digits=False) == "objects"
    assert preset_for((41, 64), 3, digits=False) == "photos"
    assert preset_for((224, 224), 3, digits=False) == "photos"


def test_the_digits_preset_never_mirrors():
    pipeline = build_train_pipeline(None, preset="digits", size=(28, 28), channels=1)
    image = left_bright_image(1, 28)
    generator = torch.Generator().manual_seed(0)
    outputs = [pipeline(image, generator) for _ in range(200)]
    assert not any(is_mirrored(out) for out in outputs)
    assert len({out.numpy().tobytes() for out in outputs}) > 100  # it does augment


@pytest.mark.parametrize("preset, side", [("objects", 32), ("photos", 64)])
def test_the_objects_and_photos_presets_mirror_sometimes(preset, side):
    pipeline = build_train_pipeline(None, preset=preset, size=(side, side), channels=3)
    image = left_bright_image(3, side)
    generator = torch.Generator().manual_seed(0)
    mirrored = sum(is_mirrored(pipeline(image, generator)) for _ in range(100))
    assert 20 < mirrored < 80


def test_preset_descriptions_and_their_eval_counterparts():
    photos = build_train_pipeline(None, preset="photos", size=(64, 64), channels=3)
    assert [entry["name"] for entry in photos.describe()] == [
        "RandomResizedCrop",
        "RandomHorizontalFlip",
        "ColorJitter",
    ]
    eval_photos = build_eval_pipeline(None, preset="photos", size=(64, 64), channels=3)
    assert [entry["name"] for entry in eval_photos.describe()] == ["Resize", "CenterCrop"]
    # The objects preset's eval (pad 4, centre crop) leaves an image at the size as it is.
    image = random_image(3, 32, 32)
    eval_objects = build_eval_pipeline(None, preset="objects", size=(32, 32), channels=3)
    assert torch.equal(eval_objects(image), image)
    assert build_train_pipeline(None, preset="none", size=(8, 8), channels=1).describe() == []


# --------------------------------------------------------------------------- the pipeline object


def test_a_generator_makes_a_call_reproducible_and_leaves_global_state_alone():
    pipeline = build_train_pipeline(
        yaml.safe_load(RANDOM_SPEC_YAML), preset="none", size=(32, 32), channels=3
    )
    image = random_image(3, 40, 40)
    state = torch.get_rng_state()
    first = pipeline(image, torch.Generator().manual_seed(5))
    again = pipeline(image, torch.Generator().manual_seed(5))
    other = pipeline(image, torch.Generator().manual_seed(6))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(torch.get_rng_state(), state)


def test_the_pipeline_pickles_and_still_works():
    spec = yaml.safe_load(TUTORIAL_YAML) + yaml.safe_load(RANDOM_SPEC_YAML)
    pipeline = build_train_pipeline(spec, preset="none", size=(32, 32), channels=3)
    copy = pickle.loads(pickle.dumps(pipeline))
    assert isinstance(copy, SamplePipeline)
    assert copy.describe() == pipeline.describe()
    assert copy.normalization == pipeline.normalization
    image = random_image(3, 40, 40)
    expected = pipeline(image, torch.Generator().manual_seed(3))
    assert torch.equal(copy(image, torch.Generator().manual_seed(3)), expected)


def test_describe_round_trips_through_yaml():
    pipeline = build_train_pipeline(
        yaml.safe_load(TUTORIAL_YAML), preset="none", size=(32, 32), channels=3
    )
    text = yaml.safe_dump(pipeline.describe())
    rebuilt = build_train_pipeline(yaml.safe_load(text), preset="none", size=(32, 32), channels=3)
    assert rebuilt.describe() == pipeline.describe()


class PipelineDataset(Dataset):
    def __init__(self, images: torch.Tensor, pipeline: SamplePipeline):
        self.images, self.pipeline = images, pipeline

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.pipeline(self.images[index])


def test_the_pipeline_runs_in_dataloader_workers():
    pipeline = build_train_pipeline(None, preset="photos", size=(48, 48), channels=3)
    images = torch.stack([random_image(3, 64, 80, seed) for seed in range(8)])
    loader = DataLoader(PipelineDataset(images, pipeline), batch_size=4, num_workers=2)
    batches = list(loader)
    assert [tuple(batch.shape) for batch in batches] == [(4, 3, 48, 48)] * 2
    assert all(batch.dtype == torch.uint8 for batch in batches)


# --------------------------------------------------------------------------- normalisation stats


def test_normalization_stats_auto_measures_each_channel():
    images = torch.zeros(2, 2, 2, 2, dtype=torch.uint8)
    images[:, 0, :, 1] = 255  # channel 0: half 0, half 255
    images[:, 1] = 51  # channel 1: constant 0.2
    mean, std = normalization_stats("auto", images)
    assert mean == pytest.approx((0.5, 0.2))
    # Unbiased std of four 0s and four 1s; a constant channel gets the 1e-3 floor, not 0.
    assert std == pytest.approx(((8 / 7 * 0.25) ** 0.5, 1e-3))


def test_normalization_stats_imagenet_and_none():
    colour = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    gray = torch.zeros(1, 1, 4, 4, dtype=torch.uint8)
    assert normalization_stats("imagenet", colour) == (IMAGENET_MEAN, IMAGENET_STD)
    mean, std = normalization_stats("imagenet", gray)
    assert mean == pytest.approx((0.449,)) and std == pytest.approx((0.226,))
    assert normalization_stats("none", colour) == ((0.0,) * 3, (1.0,) * 3)
    assert normalization_stats("none", gray) == ((0.0,), (1.0,))


def test_normalization_stats_refuses_other_modes_naming_the_option():
    named = "option 'normalize'.*auto, imagenet, inception, clip, none"
    with pytest.raises(ConfigError, match=named):
        normalization_stats("cifar", torch.zeros(1, 3, 2, 2, dtype=torch.uint8))


# --------------------------------------------------------------------------- preview


def solid_images(count: int, colour: tuple[int, ...], side: int = 28) -> torch.Tensor:
    value = torch.tensor(colour, dtype=torch.uint8).view(1, -1, 1, 1)
    return value.expand(count, -1, side, side).clone()


def count_colour(image: Image.Image, colour: tuple[int, int, int]) -> int:
    return int((np.asarray(image) == np.array(colour)).all(axis=-1).sum())


def test_preview_grid_places_each_image_scaled_in_rows_of_columns():
    images = solid_images(10, (200, 30, 60))
    grid = preview_grid(images, list(range(10)), [f"class{i}" for i in range(10)], columns=4)
    # 28 px grows by a whole factor to 84 px (about 96); 4 columns, 3 rows.
    assert grid.mode == "RGB"
    assert grid.width == 4 * (84 + GAP) + GAP
    assert 3 * 84 < grid.height < 3 * (84 + 40)
    assert count_colour(grid, (200, 30, 60)) == 10 * 84 * 84
    assert count_colour(grid, (255, 255, 255)) > 0  # white background, including 2 empty cells


def test_preview_grid_draws_gray_images_and_writes_the_class_names():
    images = solid_images(3, (90,))
    ants = preview_grid(images, [0, 0, 0], ["ant", "bee"], columns=8)
    bees = preview_grid(images, torch.tensor([1, 1, 1]), ["ant", "bee"], columns=8)
    assert ants.size == bees.size and ants.width == 3 * (84 + GAP) + GAP  # fewer than 8 columns
    assert ants.getpixel((GAP + 42, GAP + 42)) == (90, 90, 90)
    below = (GAP, GAP + 84, GAP + 84, ants.height)  # the strip under the first image
    assert ants.crop(below).getextrema()[0][0] < 128  # dark text on white
    assert not np.array_equal(np.asarray(ants.crop(below)), np.asarray(bees.crop(below)))


def test_preview_grid_shrinks_large_images():
    grid = preview_grid(solid_images(2, (10, 200, 10), side=200), [0, 1], ["a", "b"], scale_to=96)
    assert count_colour(grid, (10, 200, 10)) == 2 * 96 * 96


def test_save_preview_writes_a_png_atomically(tmp_path):
    images = solid_images(5, (90,))
    path = save_preview(images, [0, 1, 0, 1, 0], ["ant", "bee"], tmp_path / "out" / "preview.png")
    assert path == tmp_path / "out" / "preview.png"
    assert [p.name for p in path.parent.iterdir()] == ["preview.png"]  # no temporary left
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == preview_grid(images, [0, 1, 0, 1, 0], ["ant", "bee"]).size


def test_grid_tensor_is_a_three_channel_unit_range_grid():
    grid = grid_tensor(solid_images(10, (255,)), columns=4)
    assert grid.shape == (3, 3 * 30 + 2, 4 * 30 + 2)  # 28 px cells with 2 px padding
    assert grid.dtype == torch.float32 and grid.min() >= 0 and grid.max() <= 1
    assert grid_tensor(solid_images(1, (0,)), columns=4).shape == (3, 28, 28)


@pytest.mark.parametrize("count", [2, 5, 8, 13])
def test_grid_tensor_lays_images_out_as_torchvisions_make_grid(count):
    from torchvision.utils import make_grid

    images = torch.randint(0, 256, (count, 3, 6, 9), dtype=torch.uint8)
    expected = make_grid(images.float().div(255.0), nrow=4, padding=2, pad_value=1.0)
    assert torch.equal(grid_tensor(images, columns=4), expected)


def test_sample_augmented_is_reproducible_from_its_seed():
    pipeline = build_train_pipeline(None, preset="objects", size=(32, 32), channels=3)
    images = torch.stack([random_image(3, 32, 32, seed) for seed in range(5)])
    first = sample_augmented(pipeline, images, 12, seed=1)
    assert first.shape == (12, 3, 32, 32) and first.dtype == torch.uint8
    assert torch.equal(sample_augmented(pipeline, images, 12, seed=1), first)
    assert not torch.equal(sample_augmented(pipeline, images, 12, seed=2), first)
    chosen = sample_indices(len(images), 12, seed=1)
    assert sorted(chosen[:5].tolist()) == list(range(5))  # every image before any repeat
    # The eval counterpart of the objects preset is the identity: the right images were chosen.
    plain = build_eval_pipeline(None, preset="objects", size=(32, 32), channels=3)
    assert torch.equal(sample_augmented(plain, images, 12, seed=1), images[chosen])
