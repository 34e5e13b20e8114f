"""The user's own map-style Datasets, the tutorial's way: samples of (image, label) with the
image a tensor, a PIL image or a numpy array, turned into a `DataBundle`."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Subset

from taolu.data.bundle import DataBundle, image_size_for
from taolu.data.decode import fit_to_size, match_channels, to_uint8_chw
from taolu.data.embedded import SPLIT_SEED, stratified_split
from taolu.errors import DataError


class NamedSamples(Dataset):
    """Wraps a user's Dataset so a failing sample names its index (and file, when known)
    instead of dying anonymously inside a DataLoader worker."""

    def __init__(self, dataset: Dataset, channels: int, size: tuple[int, int], resize_mode: str):
        self.dataset = dataset
        self.channels = channels
        self.size = size
        self.resize_mode = resize_mode

    def __len__(self) -> int:
        return len(self.dataset)

    def where(self, index: int) -> str:
        dataset = self.dataset
        while isinstance(dataset, Subset):  # name the sample in the user's own Dataset
            index, dataset = dataset.indices[index], dataset.dataset
        name = type(dataset).__name__
        for attribute in ("img_list", "imgs", "samples", "files"):
            items = getattr(dataset, attribute, None)
            if isinstance(items, (list, tuple)) and 0 <= index < len(items):
                item = items[index]
                return f"{name}[{index}] ({item[0] if isinstance(item, tuple) else item})"
        return f"{name}[{index}]"

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        try:
            sample = self.dataset[index]
            image, label = sample[0], sample[1]
            tensor = match_channels(to_uint8_chw(image), self.channels)
            return fit_to_size(tensor, self.size, self.resize_mode), int(label)
        except DataError as error:
            raise DataError(f"{self.where(index)}: {error}") from None
        except Exception as error:  # the user's code: name the sample, keep the cause
            raise DataError(
                f"{self.where(index)} could not be loaded: {type(error).__name__}: {error}"
            ) from error


def _labels_of(dataset: Dataset) -> list[int] | None:
    """The labels a Dataset declares (torchvision's `targets`), without loading images."""
    targets = getattr(dataset, "targets", None)
    if targets is None:
        return None
    return [int(t) for t in (targets.tolist() if isinstance(targets, torch.Tensor) else targets)]


def bundle_datasets(
    train: Dataset,
    val: Dataset | None,
    classes: list[str] | None,
    *,
    val_fraction: float,
    image_size: int,
    resize_mode: str,
    channels: int,
) -> DataBundle:
    """A user's map-style Dataset(s) yielding (image, label) as a bundle.

    Without `val`, a share `val_fraction` of `train` is held out (stratified when the
    Dataset has `targets`). Channels and size come from the first sample unless given.
    """
    if len(train) == 0:
        raise DataError("the training Dataset is empty")
    first = NamedSamples(train, 0, (0, 0), resize_mode)
    try:
        probe = to_uint8_chw(train[0][0])
    except Exception as error:
        raise DataError(f"{first.where(0)} could not be loaded: {error}") from error
    channels = channels or (1 if probe.shape[0] == 1 else 3)
    size = image_size_for(image_size, tuple(probe.shape[-2:]))
    labels = _labels_of(train)
    if val is None:
        if labels is not None:
            train_index, val_index = stratified_split(torch.tensor(labels), val_fraction)
        else:
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(SPLIT_SEED))
            held_out = max(1, int(round(len(train) * val_fraction)))
            train_index, val_index = order[held_out:].sort().values, order[:held_out].sort().values
        val = Subset(train, val_index.tolist())
        train = Subset(train, train_index.tolist())
    classes = list(
        classes
        or getattr(train, "classes", None)
        or getattr(getattr(train, "dataset", None), "classes", None)
        or []
    )
    if not classes:
        labels = (
            labels if labels is not None else [int(s[1]) for s in train] + [int(s[1]) for s in val]
        )
        classes = [str(i) for i in range(max(labels) + 1)]
    return DataBundle(
        train=NamedSamples(train, channels, size, resize_mode),
        val=NamedSamples(val, channels, size, resize_mode),
        classes=[str(c) for c in classes],
        channels=channels,
        size=size,
        digits=False,
        description=f"{type(first.dataset).__name__} (your Dataset)",
        user_data=True,
    )
